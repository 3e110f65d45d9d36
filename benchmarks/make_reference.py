"""Regenerate the stored reference posterior of ``logistic_regression`` (a long NUTS run).

The reference applies to one data set, ``zoo.simulate("logistic_regression", seed=0)`` at the
model's default sizes and hyperparameters, which is what ``zoo.compare("logistic_regression")``
uses when no data are given. It writes, beside the model:

* ``models/logistic_regression_reference.npz``: the data (``X``, ``y``) and thinned draws
  (``w`` (n, D), ``b`` (n,)), resampled by the reference's ``sample``;
* ``models/logistic_regression_reference.json``: means and sds over all draws with their Monte
  Carlo standard errors (ArviZ ``mcse_mean`` / ``mcse_sd``), r_hat, bulk and tail ESS,
  divergences, seconds, settings, versions, date and the SHA-256 of the data.

Command (about 4 minutes on one busy core)::

    python benchmarks/make_reference.py                   # 4 chains x (1000 warmup + 3000 draws)
    python benchmarks/make_reference.py --num-samples 500 --out /tmp/ref   # a quick trial
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch

import zoo
from zoo.models import logistic_regression as lr

MODEL = "logistic_regression"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--num-warmup", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=3000, help="draws per chain after warm-up")
    p.add_argument("--keep", type=int, default=4000, help="thinned draws stored in the .npz")
    p.add_argument("--seed", type=int, default=2024, help="seed of the NUTS run (the data use seed 0)")
    p.add_argument("--out", type=Path, default=lr.REFERENCE_NPZ.parent,
                   help="folder for the .npz and .json (default: models/)")
    return p.parse_args(argv)


def make_reference(num_chains: int, num_warmup: int, num_samples: int, keep: int,
                   seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Run the zoo's ``nuts`` back-end on the reference data set; returns (arrays, metadata)."""
    spec = zoo.get_model(MODEL)
    data, truth = zoo.simulate(MODEL, seed=0)
    hyper = {k: float(h.default) for k, h in spec.hyper.items()}
    start = time.perf_counter()
    res = zoo.run(MODEL, "nuts", data=data, seed=seed, num_chains=num_chains, num_warmup=num_warmup,
                  num_samples=num_samples, jit=True, progress=False)
    seconds = time.perf_counter() - start
    summary = res.summary(round_to="none")
    flat = {k: res.draws(k) for k in spec.latent_sites}
    total = len(flat["b"])
    step = max(1, total // keep)
    thinned = {k: v[::step][:keep] for k, v in flat.items()}

    def per_site(column: str) -> dict[str, list | float]:
        out = {}
        for k in spec.latent_sites:
            rows = [r for r in summary.index if r == k or r.startswith(k + "[")]
            vals = [float(summary.loc[r, column]) for r in rows]
            out[k] = vals if flat[k].ndim > 1 else vals[0]
        return out

    meta = {
        "model": MODEL,
        "reference": "mcmc",
        "how": (f"zoo.run('{MODEL}', 'nuts', data=zoo.simulate('{MODEL}', seed=0)[0], seed={seed}, "
                f"num_chains={num_chains}, num_warmup={num_warmup}, num_samples={num_samples}, jit=True); "
                "mean and sd over all draws; MCSE, ESS and r_hat from ArviZ's summary; the .npz keeps "
                f"one draw in {step}"),
        "command": "python benchmarks/make_reference.py",
        "data": {"seed": 0, "N": int(data["X"].shape[0]), "D": int(data["X"].shape[1]),
                 "sha256": lr.data_hash(data["X"], data["y"])},
        "truth": {k: np.asarray(v).tolist() for k, v in truth.items()},
        "hyper": hyper,
        "num_chains": num_chains, "num_warmup": num_warmup, "num_samples": num_samples,
        "draws_total": int(total), "draws_stored": len(thinned["b"]), "thin": int(step),
        "mean": {k: np.asarray(v.mean(0)).tolist() for k, v in flat.items()},
        "sd": {k: np.asarray(v.std(0, ddof=1)).tolist() for k, v in flat.items()},
        "mcse_mean": per_site("mcse_mean"), "mcse_sd": per_site("mcse_sd"),
        "ess_bulk": per_site("ess_bulk"), "ess_tail": per_site("ess_tail"), "r_hat": per_site("r_hat"),
        "divergences": int(res.diagnostics.get("divergences", 0)),
        "seconds": round(seconds, 1),
        "versions": {"pyro": pyro.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    arrays = {"X": np.asarray(data["X"], dtype=float), "y": np.asarray(data["y"], dtype=float), **thinned}
    return arrays, meta


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    arrays, meta = make_reference(args.num_chains, args.num_warmup, args.num_samples, args.keep, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    npz, js = args.out / lr.REFERENCE_NPZ.name, args.out / lr.REFERENCE_JSON.name
    np.savez_compressed(npz, **arrays)
    js.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {npz} ({npz.stat().st_size / 1e3:.0f} kB) and {js} in {meta['seconds']} s", file=sys.stderr)
    for k in meta["mean"]:
        print(f"{k}: mean {np.round(meta['mean'][k], 4)} (mcse {np.round(meta['mcse_mean'][k], 4)}), "
              f"sd {np.round(meta['sd'][k], 4)}, r_hat max {np.max(meta['r_hat'][k]):.4f}, "
              f"ess_bulk min {np.min(meta['ess_bulk'][k]):.0f}")


if __name__ == "__main__":
    main()

"""Reference posteriors from a peer library, NumPyro, for posteriordb posteriors without reference draws.

Command line::

    python benchmarks/numpyro_references.py POSTERIORDB [--peer-python PATH] [--only NAME ...]
        [--chains 10] [--warmup 1000] [--draws 1000] [--seed 0]

posteriordb (snapshot in ``posteriordb/__init__.py``) has reference draws for no logistic
regression and no radon-type multilevel regression. For the suite's posteriors of those
kinds (``PEER_SUITE``) this script writes the data file exactly as
``benchmarks/posteriordb_references.py`` does, then runs NumPyro's NUTS (float64, 10 chains
of 1000 warm-up + 1000 kept iterations by default) on the NumPyro translations in
``benchmarks/numpyro_reference_models.py`` under ``--peer-python`` (an interpreter with
numpyro and jax, default ``.venv-peer/bin/python``: ``python3 -m venv .venv-peer &&
.venv-peer/bin/pip install numpyro jax``), and summarises the draws with the same
statistics as the posteriordb references (mean, sd, MCSEs, ESS, r_hat, quantiles). The
reference file says ``"reference": "numpyro"`` and records the versions, settings, seed,
seconds and this command. NumPyro shares no code with Pyro or the zoo, so a reference made
here is an independent check of the Pyro translation.

A run is refused (nothing written) unless every scalar has r_hat < 1.01 and bulk ESS over
1000, and no transition diverged.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from posteriordb_references import (
    LICENSE,
    ROOT,
    STATISTICS,
    Entry,
    PosteriorDB,
    Scalar,
    command_line,
    floats,
    ints,
    selected,
    suite_arguments,
    summary_rows,
    write_data,
    write_json,
)

PEER_MODELS = Path(__file__).with_name("numpyro_reference_models.py")
SETTINGS = {"target_accept": 0.8}


def site_scalars(draws: dict[str, np.ndarray], sites: list[str], stan: dict[str, str]) -> list[Scalar]:
    """Every scalar of ``sites`` (arrays shaped (chain, draw, ...)), named as in Stan (from 1)."""
    out = []
    for site in sites:
        x = draws[site]
        for idx in np.ndindex(*x.shape[2:]):
            name = stan.get(site, site) + ("[" + ",".join(str(i + 1) for i in idx) + "]" if idx else "")
            out.append(Scalar(site, idx, name, x[(slice(None), slice(None)) + idx]))
    return out


def wells_convert(d: dict) -> dict:
    return {"distance": floats(d["dist"]), "switched": floats(d["switched"])}


def radon_convert(d: dict) -> dict:
    return {"J": int(d["J"]), "county_idx": ints(np.asarray(d["county_idx"]) - 1),
            "log_uppm": floats(d["log_uppm"]), "floor_measure": floats(d["floor_measure"]),
            "log_radon": floats(d["log_radon"])}


PEER_SUITE: list[Entry] = [
    Entry("wells_dist", "wells_data-wells_dist", wells_convert,
          lambda draws, _: site_scalars(draws, ["beta"], {}),
          "switched kept (as 0.0/1.0 floats, the Bernoulli site's values) and dist renamed distance "
          "(dist is the usual name of pyro.distributions); N, arsenic, assoc and educ (unused) dropped"),
    Entry("radon_hierarchical_intercept_noncentered", "radon_mn-radon_hierarchical_intercept_noncentered",
          radon_convert,
          lambda draws, _: site_scalars(draws, ["alpha_raw", "beta", "mu_alpha", "sigma_alpha", "sigma_y", "alpha"], {}),
          "J, log_uppm, floor_measure and log_radon kept; county_idx counted from 0 (Stan counts from 1); "
          "N dropped (implied by county_idx)"),
]


def run_peer(python: str, entry: Entry, data: dict, settings: dict) -> tuple[dict[str, np.ndarray], dict]:
    """Run the NumPyro job; returns (draws, the peer's report)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "draws.npz"
        job = {"model": entry.name, "data": data, "out": str(out), **settings}
        proc = subprocess.run([python, str(PEER_MODELS)], input=json.dumps(job), capture_output=True, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{entry.name}: the NumPyro run failed:\n{proc.stderr[-3000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(out) as f:
            draws = {k: f[k] for k in f.files}
    return draws, report


def build(pdb: PosteriorDB, entry: Entry, python: str, settings: dict, out: Path, command: str) -> dict:
    post = pdb.posterior(entry.posterior)
    if post["reference_posterior_name"]:
        raise SystemExit(f"{entry.posterior} has posteriordb reference draws: use posteriordb_references.py")
    data = write_data(pdb, entry, post, out, command)
    draws, report = run_peer(python, entry, data, settings)
    rows = summary_rows(entry.sites(draws, data))
    bad = [r["stan"] for r in rows if not (r["r_hat"] < 1.01 and r["ess_bulk"] > 1000)]
    if bad or report["divergences"]:
        raise SystemExit(f"{entry.name}: not a reference: {report['divergences']} divergences; "
                         f"r_hat >= 1.01 or bulk ESS <= 1000 at {bad[:10]}")
    write_json(out / "reference" / f"{entry.name}.json", {
        "name": entry.name,
        "posterior": entry.posterior,
        "model_name": post["model_name"],
        "data_name": post["data_name"],
        "reference": "numpyro",
        "reference_posterior": None,
        "posteriordb_commit": pdb.commit,
        "reference_inference": {
            "method": "numpyro NUTS (multinomial, diagonal mass matrix adapted in Stan's windows), float64",
            "model": f"{PEER_MODELS.relative_to(ROOT)}::{entry.name}",
            "chains": settings["num_chains"], "warmup": settings["num_warmup"],
            "draws": settings["num_samples"], "seed": settings["seed"],
            "target_accept": settings["target_accept"], "chain_method": "sequential",
            "divergences": report["divergences"], "max_num_steps": report["max_num_steps"],
            "seconds": round(report["seconds"], 1),
        },
        "versions": report["versions"],
        "chains": settings["num_chains"],
        "draws_per_chain": settings["num_samples"],
        "statistics": STATISTICS,
        "license": LICENSE + " (data); the reference draws are this script's",
        "command": command,
        "scalars": rows,
    })
    return {"name": entry.name, "posterior": entry.posterior, "scalars": len(rows),
            "max_r_hat": max(r["r_hat"] for r in rows), "min_ess_bulk": min(r["ess_bulk"] for r in rows),
            "seconds": report["seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = suite_arguments(__doc__)
    parser.add_argument("--peer-python", default=str(ROOT / ".venv-peer" / "bin" / "python"),
                        help="an interpreter with numpyro and jax (default: %(default)s)")
    parser.add_argument("--chains", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    entries = selected(parser, args.only, PEER_SUITE)
    pdb = PosteriorDB(args.posteriordb, args.commit)
    settings = {"num_chains": args.chains, "num_warmup": args.warmup, "num_samples": args.draws,
                "seed": args.seed, **SETTINGS}
    command = command_line("numpyro_references.py", argv)
    print(f"posteriordb {pdb.commit}; NumPyro under {args.peer_python}")
    print("| name | posterior | scalars | max r_hat | min ess_bulk | seconds |")
    print("|---|---|---|---|---|---|")
    for entry in entries:
        r = build(pdb, entry, args.peer_python, settings, args.out, command)
        print(f"| {r['name']} | {r['posterior']} | {r['scalars']} | {r['max_r_hat']:.4f} | "
              f"{r['min_ess_bulk']:.0f} | {r['seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SVI with plate subsampling on large N: memory flat in N, time per epoch linear in N.

For each model and N in 10^4, 10^5, 10^6 one child process (so that its peak memory is its
own) simulates N points, then fits a mean-field normal guide (``AutoNormal``) by SVI whose
every step scores a random minibatch of B points scaled by N / B (``pyro.plate(...,
subsample=idx)`` with B indices drawn uniformly with replacement: an unbiased estimate of the
full-data ELBO in O(B) per step; Pyro's own ``subsample_size=B`` draws ``torch.randperm(N)``
every step, which is O(N): measured 116 ms against 7 ms per step at N = 10^6). A second child
runs a few full-batch steps on the same data for contrast. Reported per N:

* ``ms_per_step`` and ``s_per_epoch`` (an epoch is N / B minibatch steps, so time per epoch is
  linear in N when the step time is flat); the full-batch step time beside it;
* ``extra_mb``: growth of peak resident memory (``ru_maxrss``) during training, over the peak
  reached once the data exist: flat in N with subsampling, linear without. The data
  themselves (``data_mb``) are not counted;
* ``max_abs_err``: the largest |guide mean - true value| over the global latents (for the
  mixture: after sorting components by location), with the guide's largest sd beside it.

Models: ``logistic_regression`` (the zoo's model, ``subsample_size=B``) and
``gaussian_mixture`` (1-D, K=3, assignments summed out by enumeration with TraceEnum_ELBO):
the zoo's model when ``models/gaussian_mixture.py`` exists and its ``model`` takes a
``subsample_size`` keyword, otherwise the subsampled variant written here (the table says which).

Examples::

    python benchmarks/large_data.py                      # about 2-3 minutes on 2 cores
    python benchmarks/large_data.py --sizes 10000,100000 --steps 500 --out large.json
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import platform
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = (10_000, 100_000, 1_000_000)
MODELS = ("logistic_regression", "gaussian_mixture")
D = 5
K = 3


def maxrss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def gmm_subsampled(x=None, N=None, subsample_size=None, K=K):
    """1-D Gaussian mixture with plate subsampling (the benchmark's own variant).

    Generative story::

        weights ~ Dirichlet(1_K); locs_k ~ Normal(0, 10); scales_k ~ LogNormal(0, 1)
        assignment_i ~ Categorical(weights); x_i ~ Normal(locs[a_i], scales[a_i])
    """
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.ops.indexing import Vindex

    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K, dtype=torch.float64)))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
        scales = pyro.sample("scales", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    n = N if x is None else x.shape[0]
    # indices with replacement, O(B): Pyro's subsample_size draws randperm(N), O(N) per step
    subsample = None if subsample_size is None else torch.randint(0, n, (int(subsample_size),))
    with pyro.plate("data", n, subsample=subsample) as idx:
        xb = None if x is None else x[idx]
        a = pyro.sample("assignment", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(Vindex(locs)[..., a], Vindex(scales)[..., a]), obs=xb)


def _gmm_model():
    """The zoo's gaussian_mixture model if it takes ``subsample_size``, else ours."""
    if importlib.util.find_spec("zoo.models.gaussian_mixture") is not None:
        from zoo.models import gaussian_mixture

        if "subsample_size" in inspect.signature(gaussian_mixture.model).parameters:
            return gaussian_mixture.model, "zoo model models/gaussian_mixture.py"
    return gmm_subsampled, "benchmark's own subsampled variant (zoo model has no subsample_size)"


def simulate(name: str, n: int, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Data (torch tensors) and true globals for one benchmark model."""
    import torch

    rng = np.random.default_rng(seed)
    if name == "logistic_regression":
        w, b = rng.normal(size=D), -0.5
        X = rng.normal(size=(n, D))
        y = (rng.random(n) < 1 / (1 + np.exp(-(X @ w + b)))).astype(float)
        return {"X": torch.as_tensor(X), "y": torch.as_tensor(y)}, {"w": w, "b": np.array(b)}
    locs, scales, weights = np.array([-4.0, 0.0, 5.0]), np.array([1.0, 0.7, 1.5]), np.array([0.3, 0.4, 0.3])
    a = rng.choice(K, size=n, p=weights)
    x = rng.normal(locs[a], scales[a])
    return {"x": torch.as_tensor(x)}, {"weights": weights, "locs": locs, "scales": scales}


def run_one(name: str, n: int, *, batch: int, steps: int, full_steps: int, subsample: bool,
            seed: int, lr: float) -> dict[str, Any]:
    """Fit one model on N points in this process; timings and memory as in the docstring."""
    import pyro
    import torch
    from pyro import poutine
    from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
    from pyro.infer.autoguide import AutoNormal, init_to_value
    from pyro.optim import ClippedAdam

    torch.set_num_threads(1)
    rss_import = maxrss_mb()
    data, truth = simulate(name, n, seed)
    data_mb = sum(v.numel() * v.element_size() for v in data.values()) / 1024**2
    rss_data = maxrss_mb()
    B = batch if subsample else None
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    if name == "logistic_regression":
        from zoo.models.logistic_regression import model as lr_model

        model, source = partial(lr_model, **data, subsample_size=B), "zoo model models/logistic_regression.py"
        guide = AutoNormal(model)
        elbo = Trace_ELBO()
    else:
        gmm, source = _gmm_model()
        model = partial(gmm, **data, subsample_size=B)
        init = {"locs": torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) * float(data["x"].std()),
                "scales": torch.ones(K, dtype=torch.float64),
                "weights": torch.full((K,), 1.0 / K, dtype=torch.float64)}
        guide = AutoNormal(poutine.block(model, hide=["assignment"]), init_loc_fn=init_to_value(values=init))
        elbo = TraceEnum_ELBO(max_plate_nesting=1)
    num = steps if subsample else full_steps
    svi = SVI(model, guide, ClippedAdam({"lr": lr, "lrd": 0.05 ** (1 / num)}), elbo)
    with pyro.validation_enabled(False):
        for _ in range(5):  # first steps build the parameters: not timed
            svi.step()
        start = time.perf_counter()
        for _ in range(num):
            svi.step()
        seconds = time.perf_counter() - start
    with torch.no_grad():
        medians = {k: v.detach().numpy() for k, v in guide.median().items()}
        q = guide.quantiles([0.1587, 0.8413])  # +-1 sd of a normal, mapped to each site's support
        q_sd = {k: ((v[1] - v[0]) / 2).detach().numpy() for k, v in q.items()}
    if "locs" in medians:  # label switching: sort components by location
        order = np.argsort(medians["locs"])
        medians = {k: v[order] for k, v in medians.items()}
    err = max(float(np.max(np.abs(np.asarray(medians[k]) - truth[k]))) for k in truth)
    step_ms = 1000 * seconds / num
    return {
        "model": name, "N": n, "subsample": B if subsample else "full", "source": source,
        "ms_per_step": step_ms, "s_per_epoch": step_ms / 1000 * (n / batch if subsample else 1),
        "steps": num, "data_mb": data_mb, "extra_mb": maxrss_mb() - rss_data,
        "rss_import_mb": rss_import, "rss_peak_mb": maxrss_mb(),
        "max_abs_err": err if subsample else float("nan"),
        "guide_sd_max": float(max(np.max(v) for v in q_sd.values())) if subsample else float("nan"),
    }


def run_in_child(**job: Any) -> dict[str, Any]:
    """`run_one` in a fresh interpreter (its own ``ru_maxrss``)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": job["name"], "N": job["n"], "note": f"error: {tail[:200]}"}
    return json.loads(lines[-1])


def render(rows: list[dict[str, Any]]) -> str:
    """One markdown table per model: N, subsampled and full-batch time and memory, error."""
    df = pd.DataFrame(rows)
    if "subsample" not in df:
        return df.to_markdown(index=False)
    out = []
    for name, g in df.groupby("model", sort=False):
        sub, full = g[g["subsample"] != "full"].set_index("N"), g[g["subsample"] == "full"].set_index("N")
        table = pd.DataFrame({
            "N": sub.index,
            "B": sub["subsample"].values,
            "ms/step": sub["ms_per_step"].values,
            "s/epoch": sub["s_per_epoch"].values,
            "extra MB (subsampled)": sub["extra_mb"].values,
            "data MB": sub["data_mb"].values,
            "ms/step full batch": full["ms_per_step"].reindex(sub.index).values,
            "extra MB full batch": full["extra_mb"].reindex(sub.index).values,
            "max |err|": sub["max_abs_err"].values,
            "guide sd max": sub["guide_sd_max"].values,
        })
        out.append(f"### {name} ({sub['source'].iloc[0]})\n\n" + table.to_markdown(index=False, floatfmt=".3g"))
    return "\n\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--batch", type=int, default=1000, help="minibatch size B")
    p.add_argument("--steps", type=int, default=1500, help="subsampled SVI steps per N")
    p.add_argument("--full-steps", type=int, default=10, help="full-batch steps for the contrast")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_one(**json.loads(args.child)), default=float))
        return []
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for n in [int(s) for s in args.sizes.split(",")]:
            for subsample in (True, False):
                start = time.perf_counter()
                rows.append(run_in_child(name=name, n=n, batch=args.batch, steps=args.steps,
                                         full_steps=args.full_steps, subsample=subsample,
                                         seed=args.seed, lr=args.lr))
                print(f"[{name}] N={n} {'subsampled' if subsample else 'full batch'}: "
                      f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    print(f"\nSVI with plate subsampling (B={args.batch}, {args.steps} steps; full batch: "
          f"{args.full_steps} steps; memory = growth of ru_maxrss during training)\n")
    print(render(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "python": platform.python_version(), "rows": rows},
                                       indent=1, default=float))
        print(f"\nwrote {args.out}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()

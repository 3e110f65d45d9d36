"""Performance of back-ends per model: time, gradient evaluations, ESS per second, seconds to
reach the accuracy gate, peak memory; and the same models in NumPyro when it is installed.

For each model x back-end, one child process (so that its peak memory is its own) runs:

1. the back-end at the main settings (``MAIN``, or ``QUICK`` with ``--quick``) through
   ``zoo.compare``: wall seconds of the inference (``Result.seconds``), gradient evaluations
   (NUTS/HMC: calls of Pyro's ``potential_grad``, counted by wrapping it, warm-up included;
   SVI: steps x particles), bulk and tail ESS (minimum over latent scalars) per second, max |z|
   against the exact or stored reference posterior, and peak resident memory (``ru_maxrss``
   of the child after the run, the ~300 MB of importing torch and pyro included; the column
   ``rss_import_mb`` is the same measure taken before the run);
2. the accuracy gate: the back-end again with doubling budgets (``LADDER``: NUTS warm-up and
   draws, SVI steps) until every latent scalar has |z| < 0.25 against the reference; the
   wall seconds of the first run that passes is ``seconds_to_gate`` (empty where there is no
   reference, or no budget passed).

Models: any registered model, ``logistic_regression:N=5000,D=20`` (simulated at other sizes:
no reference, so no gate), and ``eight_schools`` (non-centred), registered here with
``zoo.register``: benchmark-only, no reference.

NUTS speed levers (``--levers``): the same NUTS run as back-end labels ``nuts:<lever>``
(``LEVERS``): Pyro's kernel one chain at a time, with and without its torch.jit potential;
the zoo's batched sampler (all chains in one batch, traced potential), with a dense mass
matrix, and with 16 chains instead of 4 (a batch of chains costs about what one chain costs).

NumPyro peer section: with ``--peer-python PATH`` (an interpreter where ``import numpyro``
works, e.g. a separate venv: ``python -m venv /tmp/npvenv && /tmp/npvenv/bin/pip install
numpyro jax``; by default this interpreter if it has numpyro), the same NUTS settings on the same
data for ``logistic_regression``, ``eight_schools`` and ``beta_bernoulli``, for every NUTS row of the zoo, with
NumPyro's chains run sequentially (its choice on one CPU device) and vectorised (batched like
the zoo's), and the ratio of ESS per second in the same run. NumPyro is never required by the zoo: without it the section says so and is skipped.

Examples::

    python benchmarks/perf.py --quick
    python benchmarks/perf.py --models logistic_regression --backends nuts,svi --out perf.json
    python benchmarks/perf.py --quick --peer-python /tmp/npvenv/bin/python
    python benchmarks/perf.py --models eight_schools,logistic_regression --backends nuts --levers \
        --peer-python /tmp/npvenv/bin/python
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import zoo
from benchmarks.backends import _jsonable
from zoo import registry
from zoo.core.problem import prepare

MODELS = ["logistic_regression", "logistic_regression:N=5000,D=20", "eight_schools", "normal_gamma"]
BACKENDS = ["nuts", "svi"]
Z_GATE = 0.25
MAIN = {
    "nuts": {"num_samples": 500, "num_warmup": 500, "num_chains": 4, "jit": True},
    "hmc": {"num_samples": 500, "num_warmup": 500, "num_chains": 4},
    "svi": {"num_steps": 2000, "num_samples": 1000, "num_chains": 4},
}
QUICK = {
    "nuts": {"num_samples": 200, "num_warmup": 200, "num_chains": 2, "jit": True},
    "hmc": {"num_samples": 200, "num_warmup": 200, "num_chains": 2},
    "svi": {"num_steps": 500, "num_samples": 500, "num_chains": 2, "num_elbo_particles": 200},
}
# NUTS speed levers (issue 7), run as back-end labels "nuts:<lever>" on top of the settings above
LEVERS = {
    "pyro": {"sampler": "pyro", "jit": False},          # Pyro's kernel, one chain at a time
    "pyro_jit": {"sampler": "pyro", "jit": True},       # ... with its potential traced by torch.jit
    "batched": {"sampler": "batched"},                  # all chains in one batch, traced potential
    "batched_dense": {"sampler": "batched", "dense_mass": True},
    "batched_16_chains": {"sampler": "batched", "num_chains": 16},
}
LADDER = {
    "nuts": [{"num_warmup": n, "num_samples": n, "num_chains": 2, "jit": True} for n in (50, 100, 200, 400, 800)],
    "hmc": [{"num_warmup": n, "num_samples": n, "num_chains": 2} for n in (50, 100, 200, 400, 800)],
    "svi": [{"num_steps": n, "num_samples": 500, "num_chains": 2, "num_elbo_particles": 100}
            for n in (125, 250, 500, 1000, 2000, 4000)],
}

EIGHT_SCHOOLS = {"y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],
                 "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]}


def eight_schools(sigma, y=None):
    """Eight schools, non-centred (Rubin 1981; Gelman et al. BDA 5.5).

    Generative story::

        mu ~ Normal(0, 5); tau ~ HalfCauchy(5)
        theta_tilde_j ~ Normal(0, 1); theta_j = mu + tau theta_tilde_j     # j = 1..8
        y_j ~ Normal(theta_j, sigma_j)
    """
    import pyro
    import pyro.distributions as dist

    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", sigma.shape[-1]):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def register_benchmark_models() -> None:
    """Register ``eight_schools`` (benchmark-only) unless it is there already."""
    if "eight_schools" not in registry.MODELS:
        zoo.register("eight_schools", eight_schools, data=EIGHT_SCHOOLS,
                     seed_section="benchmark only (posteriordb eight_schools_noncentered)")


def parse_label(label: str) -> tuple[str, dict[str, int]]:
    """``"logistic_regression:N=5000,D=20"`` -> (model, sizes)."""
    name, _, rest = label.partition(":")
    sizes = {k.strip(): int(v) for k, v in (p.split("=") for p in rest.split(",") if p.strip())}
    return name, sizes


def benchmark_data(label: str, seed: int) -> dict[str, np.ndarray]:
    """The data of one benchmark model: the example (eight schools) or ``zoo.simulate``."""
    name, sizes = parse_label(label)
    spec = zoo.get_model(name)
    if spec.example is not None:
        return {k: np.asarray(v) for k, v in spec.example.items()}
    return zoo.simulate(name, seed=seed, **sizes)[0]


def maxrss_mb() -> float:
    """Peak resident memory of this process so far, in MB (ru_maxrss is kB on Linux)."""
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _compare(name: str, backend: str, data: dict, seed: int, options: dict) -> dict[str, Any]:
    """The comparison table's row of one run, with the run's diagnostics under ``"diagnostics"``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = zoo.compare(name, backends=[backend], data=data, seed=seed, progress=False, **options)
    row = cmp.table.iloc[0].to_dict()
    if "seconds" not in row or pd.isna(row.get("seconds")):
        raise RuntimeError(str(row.get("note")))
    return {**row, "diagnostics": cmp.results[backend].diagnostics}


def run_cell(label: str, backend: str, *, quick: bool, seed: int, gate: bool = True) -> dict[str, Any]:
    """Measure one model x back-end in this process (see the module docstring)."""
    register_benchmark_models()
    name, _ = parse_label(label)
    data = benchmark_data(label, seed)
    backend, _, lever = backend.partition(":")
    settings = {**(QUICK if quick else MAIN).get(backend, {}), **LEVERS.get(lever, {})}
    rss_import = maxrss_mb()
    row = _compare(name, backend, data, seed, settings)
    rss_peak = maxrss_mb()
    if backend in ("nuts", "hmc"):
        grads = row["diagnostics"]["gradient_evaluations"]
    elif backend == "svi":
        merged = {**registry.get_backend(zoo.get_model(name), "svi").options, **settings}
        grads = merged["num_steps"] * merged["num_particles"]
    else:
        grads = 0
    out = {
        "model": label, "backend": backend + (f":{lever}" if lever else ""), "seconds": row["seconds"],
        "grad_evals": grads,
        "ess_bulk_min": row.get("ess_bulk_min"), "ess_tail_min": row.get("ess_tail_min"),
        "ess_bulk_per_s": row.get("ess_bulk_min", math.nan) / row["seconds"],
        "ess_tail_per_s": row.get("ess_tail_min", math.nan) / row["seconds"],
        "r_hat_max": row.get("r_hat_max"), "divergences": row.get("divergences"),
        "max_abs_z": row.get("max_abs_z", math.nan), "sd_ratio_min": row.get("sd_ratio_min", math.nan),
        "sd_ratio_max": row.get("sd_ratio_max", math.nan),
        "rss_peak_mb": rss_peak, "rss_import_mb": rss_import, "settings": settings,
    }
    has_reference = "max_abs_z" in row and not pd.isna(row["max_abs_z"])
    out["seconds_to_gate"], out["gate_budget"] = math.nan, "no reference" if not has_reference else \
        "not run for a lever" if lever else "not reached"
    if gate and has_reference and backend in LADDER and not lever:
        ladder = LADDER[backend][:4] if quick else LADDER[backend]
        for budget in ladder:
            r = _compare(name, backend, data, seed, budget)
            if r["max_abs_z"] < Z_GATE:
                out["seconds_to_gate"], out["gate_budget"] = r["seconds"], json.dumps(budget)
                break
    return out


def run_cell_in_child(label: str, backend: str, *, quick: bool, seed: int) -> dict[str, Any]:
    """`run_cell` in a fresh interpreter, so ``ru_maxrss`` is this cell's alone."""
    spec = json.dumps({"label": label, "backend": backend, "quick": quick, "seed": seed})
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cell", spec],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"model": label, "backend": backend, "note": f"error: {tail[0][:200]}",
                "seconds": time.perf_counter() - start}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- NumPyro peer section

PEER_SCRIPT = r'''
import json, resource, sys, time
import numpy as np
import jax, jax.numpy as jnp
import numpyro, numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from numpyro.diagnostics import summary
jax.config.update("jax_enable_x64", True)
job = json.load(sys.stdin)

def logistic_regression(X, y=None, s=1.0, s_b=2.0):
    w = numpyro.sample("w", dist.Normal(0.0, s).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, s_b))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)

def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", sigma.shape[0]):
        t = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + tau * t, sigma), obs=y)

def beta_bernoulli(y, alpha=2.0, beta=2.0):
    p = numpyro.sample("p", dist.Beta(alpha, beta))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Bernoulli(p), obs=y)

model = {"logistic_regression": logistic_regression, "eight_schools": eight_schools,
         "beta_bernoulli": beta_bernoulli}[job["model"]]
data = {k: jnp.asarray(np.asarray(v, dtype=float)) for k, v in job["data"].items()}
out = {}
for run in ("cold", "warm"):
    mcmc = MCMC(NUTS(model, target_accept_prob=0.8), num_warmup=job["num_warmup"],
                num_samples=job["num_samples"], num_chains=job["num_chains"],
                chain_method=job["chain_method"], progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(job["seed"] + (run == "warm")), **data, extra_fields=("num_steps",))
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    out["seconds_" + run] = time.perf_counter() - start
stats = summary({k: np.asarray(v) for k, v in samples.items()})
out["ess_bulk_min"] = float(min(np.min(v["n_eff"]) for v in stats.values()))
out["r_hat_max"] = float(max(np.max(v["r_hat"]) for v in stats.values()))
out["grad_evals_sampling"] = int(np.sum(np.asarray(mcmc.get_extra_fields()["num_steps"])))
flat = {k: np.asarray(v).reshape((-1,) + tuple(v.shape[2:])) for k, v in samples.items()}
out["mean"] = {k: v.mean(0).tolist() for k, v in flat.items()}
out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["versions"] = {"numpyro": numpyro.__version__, "jax": jax.__version__}
print(json.dumps(out))
'''

PEER_MODELS = ("logistic_regression", "eight_schools", "beta_bernoulli")


def find_peer_python(given: str | None) -> str | None:
    """An interpreter that can ``import numpyro``: ``given``, else this one, else None."""
    for candidate in ([given] if given else []) + [sys.executable]:
        ok = subprocess.run([candidate, "-c", "import numpyro, jax"], capture_output=True, check=False).returncode == 0
        if ok:
            return candidate
        if given:
            raise SystemExit(f"--peer-python {given}: cannot import numpyro and jax there")
    return None


def run_peer(python: str, label: str, settings: dict, seed: int, chain_method: str) -> dict[str, Any]:
    """NumPyro NUTS on the same data and settings; wall seconds cold (with JIT compilation)
    and warm (a second run), min bulk ESS, gradient evaluations during sampling, peak RSS.
    ``chain_method``: "sequential" (NumPyro's choice on one CPU device) or "vectorized"
    (chains batched with vmap, like the zoo's batched sampler)."""
    name, _ = parse_label(label)
    data = benchmark_data(label, seed)
    job = {"model": name, "data": {k: np.asarray(v).tolist() for k, v in data.items()}, "seed": seed,
           "chain_method": chain_method, **{k: settings[k] for k in ("num_warmup", "num_samples", "num_chains")}}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(PEER_SCRIPT)
    try:
        proc = subprocess.run([python, f.name], input=json.dumps(job), capture_output=True, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
    finally:
        os.unlink(f.name)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"model": label, "note": f"error: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}"}
    out = json.loads(lines[-1])
    out["model"] = label
    exact = prepare(zoo.get_model(name), data).exact()
    if exact is not None:
        out["max_abs_z"] = float(max(np.max(np.abs((np.asarray(out["mean"][k]) - exact.mean[k]) / exact.sd[k]))
                                     for k in exact.mean))
    return out


def peer_section(python: str | None, cells: pd.DataFrame, labels: list[str], quick: bool,
                 seed: int) -> tuple[str, list[dict]]:
    """Markdown of the NumPyro comparison (or why it was skipped) and its rows."""
    if python is None:
        return ("NumPyro peer: skipped (numpyro is not importable here; install it in a separate "
                "environment and pass --peer-python)"), []
    base = (QUICK if quick else MAIN)["nuts"]
    rows, peers = [], []
    for label in labels:
        if parse_label(label)[0] not in PEER_MODELS:
            continue
        mine = cells[(cells["model"] == label) & cells["backend"].str.startswith("nuts")]
        for _, cell in mine.iterrows():
            if "seconds" not in cell or pd.isna(cell["seconds"]):
                continue
            settings = {**base, **LEVERS.get(cell["backend"].partition(":")[2], {})}
            for method in ("sequential", "vectorized"):
                key = (label, method, settings["num_chains"])
                if key not in {p["key"] for p in peers}:
                    peers.append({"key": key, **run_peer(python, label, settings, seed, method)})
                peer = next(p for p in peers if p["key"] == key)
                row = {"model": label, "zoo": cell["backend"], "chains": settings["num_chains"],
                       "numpyro_chain_method": method,
                       **{f"numpyro_{k}": peer.get(k) for k in ("seconds_cold", "seconds_warm", "ess_bulk_min",
                                                                  "grad_evals_sampling", "note")},
                       "zoo_seconds": float(cell["seconds"]), "zoo_ess_bulk_per_s": float(cell["ess_bulk_per_s"])}
                if "seconds_cold" in peer:
                    for run in ("cold", "warm"):
                        row[f"numpyro_ess_bulk_per_s_{run}"] = peer["ess_bulk_min"] / peer[f"seconds_{run}"]
                        row[f"ess_per_s_ratio_zoo_over_numpyro_{run}"] = \
                            row["zoo_ess_bulk_per_s"] / row[f"numpyro_ess_bulk_per_s_{run}"]
                rows.append(row)
        print(f"[peer] {label} done", file=sys.stderr, flush=True)
    versions = next((f"; {p['versions']}" for p in peers if p.get("versions")), "")
    head = (f"NumPyro peer ({python}; NUTS {json.dumps({k: base[k] for k in ('num_warmup', 'num_samples')})} per "
            f"chain, same chains as the zoo row, float64, CPU; cold = first run incl. JIT compilation{versions})\n\n")
    table = pd.DataFrame(rows)
    return head + (table.to_markdown(index=False, floatfmt=".3g") if len(table) else "(no peer model selected)"), \
        [{k: v for k, v in p.items() if k != "key"} for p in peers]


COLUMNS = ["model", "backend", "seconds", "grad_evals", "ess_bulk_per_s", "ess_tail_per_s", "max_abs_z",
           "seconds_to_gate", "gate_budget", "rss_peak_mb", "rss_import_mb", "note"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model labels")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated back-ends")
    p.add_argument("--quick", action="store_true", help="small settings and a shorter gate ladder")
    p.add_argument("--out", type=Path, default=None, help="write every row as JSON here")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of every back-end")
    p.add_argument("--peer-python", default=None, help="an interpreter with numpyro and jax")
    p.add_argument("--no-peer", action="store_true", help="skip the NumPyro section")
    p.add_argument("--levers", action="store_true",
                   help=f"NUTS speed levers: add back-ends nuts:<lever> for each of {', '.join(LEVERS)}")
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: one child cell
    args = p.parse_args(argv)
    if args.cell is None:
        register_benchmark_models()
        # a comma followed by "NAME=" continues a label's sizes ("logistic_regression:N=5000,D=20")
        args.models = [m.strip() for m in re.split(r",(?![A-Za-z_]\w*=)", args.models) if m.strip()]
        args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if args.levers:
            args.backends += [f"nuts:{lever}" for lever in LEVERS if f"nuts:{lever}" not in args.backends]
        unknown = [m for m in args.models if parse_label(m)[0] not in zoo.list_models()]
        if unknown or not args.models:
            p.error(f"unknown model(s) {unknown}; choose from {', '.join(zoo.list_models())}")
    return args


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    if args.cell is not None:
        job = json.loads(args.cell)
        print(json.dumps({k: _jsonable(v) for k, v in run_cell(job["label"], job["backend"], quick=job["quick"],
                                                                  seed=job["seed"]).items()}))
        return pd.DataFrame()
    peer_python = None if args.no_peer else find_peer_python(args.peer_python)
    rows = []
    for label in args.models:
        name, _ = parse_label(label)
        for backend in args.backends:
            try:
                registry.get_backend(zoo.get_model(name), backend.partition(":")[0])
            except zoo.ZooError as e:
                rows.append({"model": label, "backend": backend, "note": f"not applicable: {e}"})
                continue
            print(f"[{label}] {backend} ...", file=sys.stderr, flush=True)
            rows.append(run_cell_in_child(label, backend, quick=args.quick, seed=args.seed))
    cells = pd.DataFrame(rows)
    settings = "quick " + json.dumps(QUICK) if args.quick else "main " + json.dumps(MAIN)
    print(f"\nPerformance ({settings}; seed {args.seed}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; memory = ru_maxrss of each cell's process)\n")
    print(cells[[c for c in COLUMNS if c in cells]].to_markdown(index=False, floatfmt=".3g"))
    peer_md, peer_rows = peer_section(peer_python, cells, args.models, args.quick, args.seed)
    print("\n" + peer_md)
    if args.out is not None:
        payload = {"settings": QUICK if args.quick else MAIN, "ladder": LADDER, "seed": args.seed,
                   "python": platform.python_version(), "machine": platform.platform(),
                   "rows": [{k: _jsonable(v) for k, v in r.items()} for r in rows],
                   "peer": [{k: _jsonable(v) for k, v in r.items()} for r in peer_rows]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, default=str))
        print(f"\nwrote {args.out}", file=sys.stderr)
    return cells


if __name__ == "__main__":
    main()

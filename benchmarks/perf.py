"""Performance of back-ends per model: time, gradient evaluations, ESS per second, seconds to
reach the accuracy gate, peak memory; and NUTS beside NumPyro's, measured in the same run.

For each model x back-end, one child process (so that its peak memory is its own) runs:

1. the back-end at the main settings (``MAIN``, or ``QUICK`` with ``--quick``; a back-end not
   listed there runs at its own defaults) through ``zoo.compare``: wall seconds of the
   inference (``Result.seconds``, compilation included), gradient evaluations (NUTS/HMC:
   leapfrog steps of every chain, warm-up included; SVI: steps x particles), bulk and tail
   ESS (minimum over latent scalars) per second, max |z| and sd ratios against the exact or
   stored reference posterior, peak resident memory (``ru_maxrss`` of the child after the
   run, the ~300 MB of importing torch and pyro included; ``rss_import_mb`` is the same
   measure before the run), and the 1-minute load average of the machine before and after;
2. the accuracy gate (DESIGN.md): every latent scalar within |z| < 0.25 of the reference and,
   for samplers (not svi/enum), sd ratio within 0.9-1.1. The back-end runs again with
   growing budgets (``LADDER``: NUTS/HMC warm-up and draws, SVI steps, importance particles;
   back-ends without a ladder run once at their defaults) until the gate passes; the wall
   seconds of the first run that passes is ``seconds_to_gate`` (empty where there is no
   reference, or no budget passed).

Models: any registered model (``--all``: every back-end that applies, on every model with a
reference unless ``--models`` names some), ``logistic_regression:N=5000,D=20`` (simulated at other sizes: no reference, so no
gate), and two models registered here with ``zoo.register`` as a user would write them
(benchmark-only, no reference): ``eight_schools`` (non-centred) and ``user_logistic_regression``
(``X @ w``, N=5000, D=20).

NUTS speed levers (``--levers``): the same NUTS run as back-end labels ``nuts:<lever>``
(``LEVERS``), each changing one thing: Pyro's kernel one chain at a time (with and without its
torch.jit potential); the batched sampler with its potential forced to the padded plate or to
vmap; its leaf step run by Python instead of compiled (the bookkeeping unfused); its graphs run
by TorchScript instead of the static runtime; compiled by ``torch.compile`` (inductor) instead;
with a dense mass matrix; with 8 and 16 chains. Every NUTS row also gives
``sync_step_ratio``: leapfrog steps a batch that waits for its deepest tree would take over
the steps the batch took, in the sampling phase (chains that stop paying for the deepest tree).

NumPyro peer section: with ``--peer-python PATH`` (an interpreter where ``import numpyro``
works, e.g. a separate venv: ``python -m venv .venv-peer && .venv-peer/bin/pip install numpyro
jax``; by default this interpreter if it has numpyro), the same NUTS settings on the same data
for ``eight_schools``, ``user_logistic_regression``, ``logistic_regression`` and ``beta_bernoulli``, for
every NUTS row of the zoo, with NumPyro's chains run sequentially and vectorised, and the
ratio of ESS per second in the same run: ``cold`` is NumPyro's first run (JIT compilation
included, as the zoo's seconds include its compilation), ``warm`` a second run compiled once.
NumPyro is never required by the zoo: without it the section says so and is skipped.

JSON (``--out``, default ``benchmarks/results/perf.json``): ``FIELDS`` documents every field;
the docs' tables are generated from it.

Examples::

    python benchmarks/perf.py --quick
    python benchmarks/perf.py --all --out benchmarks/results/perf.json
    python benchmarks/perf.py --all --quick --models normal_gamma --no-peer --merge   # one model's rows
    python benchmarks/perf.py --models eight_schools,user_logistic_regression --backends nuts \\
        --peer-python .venv-peer/bin/python
    python benchmarks/perf.py --models eight_schools --backends nuts --levers --peer-python .venv-peer/bin/python
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

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import zoo  # noqa: E402
from benchmarks.backends import _jsonable  # noqa: E402
from zoo import registry  # noqa: E402
from zoo.core.problem import prepare  # noqa: E402
from zoo.inference import batched, compiled, potential  # noqa: E402

MODELS = ["eight_schools", "user_logistic_regression", "logistic_regression", "normal_gamma"]
BACKENDS = ["nuts", "svi"]
Z_GATE, SD_GATE = 0.25, (0.9, 1.1)
APPROXIMATE = ("svi", "enum")  # no sd-ratio gate: a variational family may not hold the posterior
MAIN = {
    "nuts": {"num_samples": 500, "num_warmup": 500, "num_chains": 4},
    "hmc": {"num_samples": 500, "num_warmup": 500, "num_chains": 4},
    "svi": {"num_steps": 2000, "num_samples": 1000, "num_chains": 4},
}
QUICK = {
    "nuts": {"num_samples": 200, "num_warmup": 200, "num_chains": 2},
    "hmc": {"num_samples": 200, "num_warmup": 200, "num_chains": 2},
    "svi": {"num_steps": 500, "num_samples": 500, "num_chains": 2, "num_elbo_particles": 200},
}
# NUTS speed levers, run as back-end labels "nuts:<lever>": options, and a change to the batched
# sampler applied in the cell's own process (`apply_lever`)
LEVERS = {
    "pyro": {"sampler": "pyro", "jit": False},          # Pyro's kernel, one chain at a time
    "pyro_jit": {"sampler": "pyro", "jit": True},       # ... with its potential traced by torch.jit
    "plate": {"sampler": "batched"},                    # potential forced to the padded plate
    "vmap": {"sampler": "batched"},                     # potential forced to torch.func.vmap
    "eager_step": {"sampler": "batched"},               # leaf step by Python, potential compiled
    "torchscript": {"sampler": "batched"},              # graphs by TorchScript, not the static runtime
    "inductor": {"sampler": "batched"},                 # graphs by torch.compile (inductor)
    "dense": {"sampler": "batched", "dense_mass": True},
    "8_chains": {"sampler": "batched", "num_chains": 8},
    "16_chains": {"sampler": "batched", "num_chains": 16},
}
LADDER = {
    "nuts": [{"num_warmup": n, "num_samples": n, "num_chains": 2} for n in (50, 100, 200, 400, 800)],
    "hmc": [{"num_warmup": n, "num_samples": n, "num_chains": 2} for n in (50, 100, 200, 400, 800)],
    "svi": [{"num_steps": n, "num_samples": 500, "num_chains": 2, "num_elbo_particles": 100}
            for n in (125, 250, 500, 1000, 2000, 4000)],
    "enum": [{"num_steps": n, "num_samples": 500, "num_chains": 2, "num_elbo_particles": 100}
             for n in (125, 250, 500, 1000, 2000, 4000)],
    "importance": [{"num_particles": n} for n in (1000, 4000, 16000, 64000)],
}

FIELDS = {
    "settings": "options of the main run per back-end (QUICK with --quick) of the last run written; with "
                "--merge, rows of earlier runs keep theirs in rows[].settings",
    "ladder": "budgets tried in order for the accuracy gate, per back-end (others: one run at defaults)",
    "gate": "the accuracy gate: max |z| and, for samplers, the sd-ratio range",
    "seed": "seed of the data and of every back-end",
    "machine": "platform, CPU count, python, torch, pyro versions",
    "rows[].model": "model label (name[:sizes])",
    "rows[].backend": "back-end label (name[:lever])",
    "rows[].seconds": "wall seconds of the main run's inference (Result.seconds), compilation included",
    "rows[].grad_evals": "gradient evaluations of the main run (NUTS/HMC: leapfrog steps of all chains, warm-up "
                         "included; SVI: steps x particles; 0 otherwise)",
    "rows[].ess_bulk_min, rows[].ess_tail_min": "minimum over latent scalars of bulk / tail ESS (ArviZ)",
    "rows[].ess_bulk_per_s, rows[].ess_tail_per_s": "the same per second of the main run",
    "rows[].r_hat_max": "maximum rank-normalised r_hat over latent scalars",
    "rows[].divergences": "divergent transitions (NUTS/HMC)",
    "rows[].max_abs_z, rows[].sd_ratio_min, rows[].sd_ratio_max": "against the reference posterior (null: none)",
    "rows[].seconds_to_gate": "wall seconds of the cheapest ladder run that passes the gate (null: not reached "
                              "or no reference)",
    "rows[].gate_budget": "that run's options as JSON, or why there is no seconds_to_gate",
    "rows[].compile_seconds": "batched NUTS/HMC: seconds spent compiling the potential and the leaf step",
    "rows[].potential": "batched NUTS/HMC: path of the potential (vmap, plate) or pyro",
    "rows[].sync_step_ratio": "NUTS: sampling-phase leapfrog steps of a batch that waits for its deepest tree "
                              "over the steps of the batch as run",
    "rows[].load_before, rows[].load_after": "1-minute load average of the machine around the cell",
    "rows[].rss_peak_mb, rows[].rss_import_mb": "peak resident memory of the cell's process after / before the run",
    "rows[].settings": "options of the main run",
    "rows[].note": "error or not-applicable reason",
    "peer[]": "NumPyro on the same model, data and settings: seconds_cold (first run, JIT compilation "
              "included), seconds_warm (second run), ess_bulk_min, r_hat_max, grad_evals_sampling, chain_method "
              "(sequential, vectorized), load_before/after, versions",
    "comparison[]": "per zoo NUTS row and NumPyro chain method: both ESS/s and "
                    "ess_per_s_ratio_zoo_over_numpyro_{cold,warm}",
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
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", sigma.shape[-1]):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def user_logistic_regression(X, y=None):
    """Logistic regression as the Pyro tutorials write it: ``X @ w`` for one draw.

    Generative story::

        w ~ Normal(0, I_D); b ~ Normal(0, 1)
        y_i ~ Bernoulli(logits = x_i^T w + b)      # i = 1..N
    """
    w = pyro.sample("w", dist.Normal(0., 1.).expand([X.shape[1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(0., 1.))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)


def user_logistic_data(n: int = 5000, d: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal covariates, weights and outcomes of `user_logistic_regression`."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w, b = rng.normal(size=d), rng.normal()
    return {"X": X, "y": (rng.random(n) < 1 / (1 + np.exp(-(X @ w + b)))).astype(float)}


def register_benchmark_models() -> None:
    """Register ``eight_schools`` and ``user_logistic_regression`` (benchmark-only) unless there."""
    if "eight_schools" not in registry.MODELS:
        zoo.register("eight_schools", eight_schools, data=EIGHT_SCHOOLS,
                     seed_section="benchmark only (posteriordb eight_schools_noncentered)")
    if "user_logistic_regression" not in registry.MODELS:
        zoo.register("user_logistic_regression", user_logistic_regression, data=user_logistic_data(),
                     seed_section="benchmark only (a user's X @ w logistic regression)")


def parse_label(label: str) -> tuple[str, dict[str, int]]:
    """``"logistic_regression:N=5000,D=20"`` -> (model, sizes)."""
    name, _, rest = label.partition(":")
    sizes = {k.strip(): int(v) for k, v in (p.split("=") for p in rest.split(",") if p.strip())}
    return name, sizes


def benchmark_data(label: str, seed: int) -> dict[str, np.ndarray]:
    """The data of one benchmark model: its example (registered models) or ``zoo.simulate``."""
    name, sizes = parse_label(label)
    spec = zoo.get_model(name)
    if spec.example is not None:
        return {k: np.asarray(v) for k, v in spec.example.items()}
    return zoo.simulate(name, seed=seed, **sizes)[0]


def maxrss_mb() -> float:
    """Peak resident memory of this process so far, in MB (ru_maxrss is kB on Linux)."""
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def load() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def apply_lever(lever: str) -> None:
    """Change the batched sampler in this process as the lever says (see ``LEVERS``)."""
    if lever in ("plate", "vmap"):
        potential.PATHS = (lever,)
    elif lever == "eager_step":
        batched.compile_step = lambda *args, **kwargs: None
    elif lever == "torchscript":
        compiled.STATIC_RUNTIME = False
    elif lever == "inductor":
        from torch.fx.experimental.proxy_tensor import make_fx

        def inductor(fn, example):
            fx = compiled.simplify(make_fx(fn)(*example))
            graph = torch.compile(fx, backend="inductor", dynamic=False)
            graph(*example)  # compile now, inside the timed run
            return graph, fx

        compiled.compile_graph = inductor


def gate_passes(row: dict[str, Any], backend: str) -> bool:
    """The accuracy gate of DESIGN.md on a comparison row."""
    z = row.get("max_abs_z")
    if z is None or pd.isna(z) or not z < Z_GATE:
        return False
    return backend in APPROXIMATE or SD_GATE[0] <= row.get("sd_ratio_min", 0) <= row.get("sd_ratio_max", 9) <= SD_GATE[1]


def _compare(name: str, backend: str, data: dict, seed: int, options: dict) -> dict[str, Any]:
    """The comparison table's row of one run, with the run's Result under ``"result"``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = zoo.compare(name, backends=[backend], data=data, seed=seed, progress=False, **options)
    row = cmp.table.iloc[0].to_dict()
    if "seconds" not in row or pd.isna(row.get("seconds")):
        raise RuntimeError(str(row.get("note")))
    return {**row, "result": cmp.results[backend]}


def sync_step_ratio(n_steps: np.ndarray) -> float:
    """Steps of a batch that waits for its deepest tree at every iteration over the steps of
    the batch as run (chains on their own trees: as long as its busiest chain), from the
    leapfrog steps (chain, draw) of the sampling phase."""
    return float(n_steps.max(0).sum() / n_steps.sum(1).max())


def run_cell(label: str, backend: str, *, quick: bool, seed: int, gate: bool = True) -> dict[str, Any]:
    """Measure one model x back-end in this process (see the module docstring)."""
    register_benchmark_models()
    name, _ = parse_label(label)
    data = benchmark_data(label, seed)
    backend, _, lever = backend.partition(":")
    apply_lever(lever)
    settings = {**(QUICK if quick else MAIN).get(backend, {}), **LEVERS.get(lever, {})}
    rss_import, load_before = maxrss_mb(), load()
    row = _compare(name, backend, data, seed, settings)
    rss_peak = maxrss_mb()
    result = row.pop("result")
    diagnostics = result.diagnostics
    if backend in ("nuts", "hmc"):
        grads = diagnostics.get("gradient_evaluations", 0)
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
        "compile_seconds": diagnostics.get("compile_seconds"), "potential": diagnostics.get("potential"),
        "sync_step_ratio": sync_step_ratio(result.idata.sample_stats["n_steps"].values)
        if backend == "nuts" and "n_steps" in result.idata.sample_stats else None,
        "rss_peak_mb": rss_peak, "rss_import_mb": rss_import, "load_before": load_before, "load_after": load(),
        "settings": settings,
    }
    has_reference = "max_abs_z" in row and not pd.isna(row["max_abs_z"])
    out["seconds_to_gate"], out["gate_budget"] = math.nan, "no reference" if not has_reference else \
        "not run for a lever" if lever else "not reached"
    if gate and has_reference and not lever:
        ladder = LADDER.get(backend, [{}])
        for budget in ladder[:4] if quick else ladder:
            r = _compare(name, backend, data, seed, budget)
            if gate_passes(r, backend):
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
import json, os, resource, sys, time
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

def user_logistic_regression(X, y=None):
    return logistic_regression(X, y, s=1.0, s_b=1.0)

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

model = {"logistic_regression": logistic_regression, "user_logistic_regression": user_logistic_regression,
         "eight_schools": eight_schools, "beta_bernoulli": beta_bernoulli}[job["model"]]
data = {k: jnp.asarray(np.asarray(v, dtype=float)) for k, v in job["data"].items()}
out = {"load_before": os.getloadavg()[0]}
for run in ("cold", "warm"):
    mcmc = MCMC(NUTS(model, target_accept_prob=0.8), num_warmup=job["num_warmup"],
                num_samples=job["num_samples"], num_chains=job["num_chains"],
                chain_method=job["chain_method"], progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(job["seed"] + (run == "warm")), **data, extra_fields=("num_steps",))
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    out["seconds_" + run] = time.perf_counter() - start
out["load_after"] = os.getloadavg()[0]
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

PEER_MODELS = ("eight_schools", "user_logistic_regression", "logistic_regression", "beta_bernoulli")


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
    """NumPyro NUTS on the same data and settings (see ``FIELDS["peer[]"]``). ``chain_method``:
    "sequential" or "vectorized" (chains batched with vmap, like the zoo's batched sampler)."""
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
    out.update(model=label, chain_method=chain_method, num_chains=settings["num_chains"])
    exact = prepare(zoo.get_model(name), data).exact()
    if exact is not None:
        out["max_abs_z"] = float(max(np.max(np.abs((np.asarray(out["mean"][k]) - exact.mean[k]) / exact.sd[k]))
                                     for k in exact.mean))
    return out


def peer_section(python: str | None, cells: pd.DataFrame, labels: list[str], quick: bool,
                 seed: int) -> tuple[str, list[dict], list[dict]]:
    """Markdown of the NumPyro comparison (or why it was skipped), NumPyro's runs and the
    comparison rows."""
    if python is None:
        return ("NumPyro peer: skipped (numpyro is not importable here; install it in a separate "
                "environment and pass --peer-python)"), [], []
    base = (QUICK if quick else MAIN)["nuts"]
    rows, peers = [], []
    for label in labels:
        if parse_label(label)[0] not in PEER_MODELS or "backend" not in cells:
            continue
        mine = cells[(cells["model"] == label) & cells["backend"].str.startswith("nuts")]
        for _, cell in mine.iterrows():
            if "seconds" not in cell or pd.isna(cell["seconds"]) or pd.isna(cell.get("ess_bulk_per_s")):
                continue
            settings = {**base, **LEVERS.get(cell["backend"].partition(":")[2], {})}
            for method in ("sequential", "vectorized"):
                key = (label, method, settings["num_chains"])
                if key not in {p["key"] for p in peers}:
                    peers.append({"key": key, **run_peer(python, label, settings, seed, method)})
                peer = next(p for p in peers if p["key"] == key)
                row = {"model": label, "zoo": cell["backend"], "chains": settings["num_chains"],
                       "numpyro_chain_method": method,
                       **{f"numpyro_{k}": peer.get(k) for k in ("seconds_cold", "seconds_warm", "ess_bulk_min", "note")},
                       "zoo_seconds": float(cell["seconds"]), "zoo_ess_bulk_min": float(cell["ess_bulk_min"]),
                       "zoo_ess_bulk_per_s": float(cell["ess_bulk_per_s"]),
                       "load": max(cell.get("load_after", 0), peer.get("load_after", 0))}
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
    text = head + (table.to_markdown(index=False, floatfmt=".3g") if len(table) else "(no peer model selected)")
    return text, [{k: v for k, v in p.items() if k != "key"} for p in peers], rows


COLUMNS = ["model", "backend", "seconds", "grad_evals", "ess_bulk_per_s", "ess_tail_per_s", "max_abs_z",
           "seconds_to_gate", "gate_budget", "compile_seconds", "potential", "sync_step_ratio", "load_before",
           "load_after", "rss_peak_mb", "note"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=None, help=f"comma-separated model labels (default {','.join(MODELS)}; "
                                                   "with --all, every model with a reference)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated back-ends")
    p.add_argument("--all", action="store_true",
                   help="every registered model with a reference, every back-end that applies to it")
    p.add_argument("--quick", action="store_true", help="small settings and a shorter gate ladder")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "perf.json",
                   help="write every row as JSON here")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of every back-end")
    p.add_argument("--peer-python", default=None, help="an interpreter with numpyro and jax")
    p.add_argument("--no-peer", action="store_true", help="skip the NumPyro section")
    p.add_argument("--levers", action="store_true",
                   help=f"NUTS speed levers: add back-ends nuts:<lever> for each of {', '.join(LEVERS)}")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of an existing --out file that this run does not measure again "
                        "(and its peer section where this run has none)")
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: one child cell
    args = p.parse_args(argv)
    if args.cell is None:
        register_benchmark_models()
        # a comma followed by "NAME=" continues a label's sizes ("logistic_regression:N=5000,D=20")
        if args.models is None:
            args.models = ",".join([n for n, s in registry.MODELS.items() if s.reference.exact is not None]
                                   if args.all else MODELS)
        args.models = [m.strip() for m in re.split(r",(?![A-Za-z_]\w*=)", args.models) if m.strip()]
        args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if args.levers:
            args.backends += [f"nuts:{lever}" for lever in LEVERS if f"nuts:{lever}" not in args.backends]
        unknown = [m for m in args.models if parse_label(m)[0] not in zoo.list_models()]
        if unknown or not args.models:
            p.error(f"unknown model(s) {unknown}; choose from {', '.join(zoo.list_models())}")
    return args


def cells_to_run(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """(model label, back-end label, reason it does not apply or None) for every cell."""
    out = []
    for label in args.models:
        name, _ = parse_label(label)
        spec = zoo.get_model(name)
        backends = list(registry.backends_for(spec)) if args.all else args.backends
        problem = prepare(spec, benchmark_data(label, args.seed))
        for backend in backends:
            try:
                reason = registry.not_applicable(problem, registry.get_backend(spec, backend.partition(":")[0]))
            except zoo.ZooError as e:
                reason = str(e)
            out.append((label, backend, reason))
    return out


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with the rows of ``old`` whose (model, back-end) it did not measure, and
    ``old``'s peer section where ``new`` has none (``--merge``): a peer run and an ``--all``
    gate run make one file. Each row keeps its own settings and load averages."""
    seen = {(r.get("model"), r.get("backend")) for r in new["rows"]}
    out = {**new, "rows": [r for r in old.get("rows", []) if (r.get("model"), r.get("backend")) not in seen]
           + new["rows"]}
    if not new.get("peer"):
        out["peer"], out["comparison"] = old.get("peer", []), old.get("comparison", [])
    return out


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    if args.cell is not None:
        job = json.loads(args.cell)
        print(json.dumps({k: _jsonable(v) for k, v in run_cell(job["label"], job["backend"], quick=job["quick"],
                                                                  seed=job["seed"]).items()}))
        return pd.DataFrame()
    peer_python = None if args.no_peer else find_peer_python(args.peer_python)
    rows = []
    for label, backend, reason in cells_to_run(args):
        if reason is not None:
            rows.append({"model": label, "backend": backend, "note": f"not applicable: {reason}"})
            continue
        print(f"[{label}] {backend} ...", file=sys.stderr, flush=True)
        rows.append(run_cell_in_child(label, backend, quick=args.quick, seed=args.seed))
    cells = pd.DataFrame(rows)
    settings = "quick " + json.dumps(QUICK) if args.quick else "main " + json.dumps(MAIN)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"\nPerformance ({settings}; seed {args.seed}; {machine}; memory = ru_maxrss of each cell's process; "
          f"load = 1-minute load average)\n")
    print(cells[[c for c in COLUMNS if c in cells]].to_markdown(index=False, floatfmt=".3g"))
    peer_md, peer_rows, comparison = peer_section(peer_python, cells, args.models, args.quick, args.seed)
    print("\n" + peer_md)
    if args.out is not None:
        payload = {"fields": FIELDS, "settings": QUICK if args.quick else MAIN, "ladder": LADDER,
                   "gate": {"max_abs_z": Z_GATE, "sd_ratio": SD_GATE, "no_sd_ratio_for": APPROXIMATE},
                   "seed": args.seed,
                   "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                               "python": platform.python_version(), "torch": torch.__version__,
                               "pyro": pyro.__version__},
                   "rows": [{k: _jsonable(v) for k, v in r.items()} for r in rows],
                   "peer": [{k: _jsonable(v) for k, v in r.items()} for r in peer_rows],
                   "comparison": [{k: _jsonable(v) for k, v in r.items()} for r in comparison]}
        if args.merge and args.out.exists():
            payload = merged(json.loads(args.out.read_text()), payload)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, default=str))
        print(f"\nwrote {args.out}", file=sys.stderr)
    return cells


if __name__ == "__main__":
    main()

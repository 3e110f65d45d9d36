"""The public API: list, simulate, run, compare, register and load."""
from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyro import poutine
from tqdm.auto import tqdm

from inference.common import log_densities, seed_all, single_thread
from zoo import arviz_io, registry, scoring
from zoo.errors import InferenceError, ZooError
from zoo.files import write_text
from zoo.problem import (
    Problem,
    _check_data,
    _check_hyper,
    check_options,
    prepare,
    trace_model,
)
from zoo.spec import DataKey, ExactPosterior, ModelSpec

EXACT_REFERENCE_DRAWS = 20000


@dataclass
class Result:
    """One back-end's posterior on one model and data set.

    Attributes
    ----------
    idata : arviz.InferenceData with posterior (chain, draw, ...), sample_stats, observed_data
        and log_likelihood.
    seconds : wall time of the inference itself (not of validation or post-processing).
    diagnostics : r_hat_max, ess_bulk_min, ess_tail_min and what the back-end measured
        (divergences, elbo and elbo_trace, log_evidence, weight_ess, pareto_k), and the
        model's own scores (`ModelSpec.diagnose`: peer log-likelihood, adjusted Rand index,
        occupied clusters).
    scores : the scalar entries of the model's own scores (columns of the comparison table).
    """

    model: str
    backend: str
    idata: Any
    seconds: float
    diagnostics: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    hyper: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def summary(self, **kwargs: Any) -> pd.DataFrame:
        """ArviZ summary of the posterior (mean, sd, HDI, ESS, r_hat)."""
        return arviz_io.summary(self.idata, **kwargs)

    def draws(self, site: str) -> np.ndarray:
        """Draws of a latent site flattened over chains: shape (chain*draw, ...)."""
        v = self.idata.posterior[site].values
        return v.reshape((-1,) + v.shape[2:])

    def save(self, path: str | Path) -> Path:
        """Write the result to a netCDF file atomically; reload it with `zoo.load`."""
        meta = {"model": self.model, "backend": self.backend, "seconds": self.seconds,
                "diagnostics": self.diagnostics, "options": self.options, "seed": self.seed,
                "hyper": self.hyper}
        return arviz_io.save(self.idata, path, meta)


@dataclass
class Comparison:
    """Several back-ends on one model and data set, scored against the exact posterior.

    Attributes
    ----------
    table : one row per back-end (DESIGN.md columns); inapplicable back-ends carry the reason.
    scalars : one row per back-end and latent scalar: mean, sd, ESS, r_hat and, with an exact
        posterior, exact mean and sd, z, sd ratio and W1 distance.
    results : back-end label to `Result`.
    exact : the `ExactPosterior`, or None.
    """

    model: str
    table: pd.DataFrame
    scalars: pd.DataFrame
    results: dict[str, Result]
    exact: ExactPosterior | None = None
    sites: list[str] = field(default_factory=list)

    def plot(self, out: str | Path) -> list[Path]:
        """Forest and density plots of every back-end (exact included) over the global latent
        sites, as PNG files in ``out``."""
        idatas = {k: r.idata for k, r in self.results.items() if r.idata.get("posterior") is not None}
        if not idatas or not self.sites:
            return []
        return arviz_io.plot_comparison(idatas, out, self.model, self.sites)

    def save(self, out: str | Path) -> list[Path]:
        """Write table.csv, table.md, one netCDF per back-end and the plots into ``out``."""
        out = Path(out)
        files = [write_text(out / "table.csv", self.table.to_csv(index=False)),
                 write_text(out / "table.md", self.table.to_markdown(index=False, floatfmt=".4g")),
                 write_text(out / "scalars.csv", self.scalars.to_csv(index=False))]
        files += [r.save(out / f"{label.replace(':', '_')}.nc") for label, r in self.results.items()]
        return files + self.plot(out)


def list_models() -> list[str]:
    """Names of every registered model."""
    return list(registry.MODELS)


def list_backends(name: str | None = None) -> dict[str, str]:
    """Back-end names and one-line summaries, for one model (its own back-ends included)."""
    backends = registry.backends_for(registry.get_model(name)) if name else registry.BACKENDS
    return {k: b.summary for k, b in backends.items()}


def get_model(name: str) -> ModelSpec:
    """The `ModelSpec` of a model: docs (``spec.doc``), sites, data keys, hyperparameters."""
    return registry.get_model(name)


def simulate(name: str, seed: int = 0, hyper: Mapping[str, Any] | None = None,
             truth: Mapping[str, Any] | None = None, **sizes: int) -> tuple[dict, dict]:
    """Synthetic data from the model and the latent values behind it.

    Latents are drawn from the prior (or fixed by ``truth``), then the data from the model.

    Parameters
    ----------
    name : model name.
    seed : the same seed gives the same data.
    hyper : hyperparameters (defaults from the model).
    truth : optional latent values to hold fixed.
    **sizes : data sizes such as ``N=200`` (defaults from the model).

    Returns
    -------
    data : dict of numpy arrays keyed by the model's data keys.
    truth : dict of numpy arrays keyed by latent site.
    """
    spec = registry.get_model(name)
    torch_h, np_h, implied = _check_hyper(spec, hyper)
    for k, v in sizes.items():
        if k in spec.hyper:
            raise ZooError(f"model {name!r}: {k} is a hyperparameter; pass hyper={{{k!r}: {v!r}}}")
    sizes = {**spec.sizes, **implied, **sizes}
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ZooError(f"model {name!r}: size {k} must be a positive integer, got {v!r}")
    rng = np.random.default_rng(seed)
    inputs = spec.inputs(rng, sizes, np_h) if spec.inputs else {}
    problem_inputs = {k: torch.as_tensor(np.asarray(v)) if np.ndim(v) else np.asarray(v).item()
                      for k, v in inputs.items()}
    params = inspect.signature(spec.model).parameters
    size_kw = {k: v for k, v in sizes.items() if k in params and k not in spec.data}
    model = spec.model
    if truth:
        model = poutine.condition(model, {k: torch.as_tensor(np.asarray(v, dtype=float), dtype=torch.float64)
                                          for k, v in truth.items()})
    seed_all(seed)
    with torch.no_grad():
        tr = poutine.trace(model).get_trace(**_as_float64(problem_inputs), **torch_h, **size_kw)
    data = dict(inputs)
    latent = {}
    for site_name, site in tr.nodes.items():
        if site["type"] != "sample" or site_name.startswith("_") or "fn" not in site:
            continue
        value = site["value"].detach().numpy()
        if site_name in spec.data and spec.data[site_name].observed:
            data[site_name] = value.astype(np.int64) if spec.data[site_name].dtype == "long" else value
        elif (site_name in (truth or {}) or not site["is_observed"]) and not poutine.util.site_is_subsample(site):
            latent[site_name] = value
    return data, latent


def _as_float64(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in values.items()}


def _default_data(name: str, hyper: Mapping[str, Any] | None) -> tuple[dict, dict | None]:
    """A registered model's example data (truth unknown), else ``simulate(name, seed=0)``."""
    example = registry.get_model(name).example
    return (dict(example), None) if example is not None else simulate(name, seed=0, hyper=hyper)


def _prepare_problem(spec: ModelSpec, data, hyper, truth=None) -> tuple[Problem, dict | None]:
    """Validate the data (the model's default data, and its truth, when None) once."""
    if data is None:
        data, truth = _default_data(spec.name, hyper)
    return prepare(spec, data, hyper), truth


def _plan(problem: Problem, backend: str, options: Mapping[str, Any]):
    """The back-end, its validated options and why it does not apply (or None)."""
    b = registry.get_backend(problem.spec, backend)
    return b, check_options(problem, b, options), not_applicable(problem, b)


def not_applicable(problem: Problem, backend) -> str | None:
    """Why ``backend`` cannot run on ``problem``: its own check, then the model's limits."""
    return (backend.applicable(problem) if backend.applicable else None) or problem.spec.limits.get(backend.name)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ZooError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _execute(problem: Problem, b, opts: dict, seed: int, label: str,
             truth: Mapping[str, Any] | None = None) -> Result:
    spec = problem.spec
    with single_thread():
        start = time.perf_counter()
        fit = b.fit(problem, seed=seed, **opts)
        seconds = time.perf_counter() - start
        posterior = spec.relabel(fit.posterior) if spec.relabel and fit.posterior else fit.posterior
        # discrete sites are summed out of the pointwise log-likelihood (mixture densities)
        given = {k: v for k, v in posterior.items() if not problem.sites[k].discrete} or posterior
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in given.items()}
        _, log_lik = log_densities(problem, flat) if flat else (None, {})
        scores = dict(spec.diagnose(problem, posterior, dict(truth) if truth else None)) if spec.diagnose else {}
        if spec.local_rows is not None:  # a few rows of each local latent are enough to look at
            posterior = {k: v if k in spec.latent_sites else v[:, :, :spec.local_rows] for k, v in posterior.items()}
    chains, draws = next(iter(posterior.values())).shape[:2] if posterior else (0, 0)
    idata = arviz_io.to_idata(
        posterior, sample_stats=fit.sample_stats,
        log_likelihood={k: v.reshape((chains, draws) + v.shape[1:]) for k, v in log_lik.items()},
        observed_data={k: problem.np_data[k] for k in problem.observed if k in problem.np_data},
        attrs={"model": problem.name, "backend": label, "seed": seed})
    diagnostics: dict[str, Any] = {}
    if posterior:
        stats = arviz_io.scalar_stats(idata, _scored_sites(problem))
        diagnostics = {"r_hat_max": float(stats["r_hat"].max()), "ess_bulk_min": float(stats["ess_bulk"].min()),
                       "ess_tail_min": float(stats["ess_tail"].min())}
    diagnostics.update(fit.diagnostics, **scores)
    if diagnostics.get("divergences"):
        warnings.warn(f"model {problem.name!r}, back-end {label!r}: {diagnostics['divergences']} "
                      "divergent transitions; the draws may be biased", RuntimeWarning, stacklevel=3)
    return Result(problem.name, label, idata, seconds, diagnostics,
                  {k: v for k, v in opts.items() if k != "progress"}, seed,
                  {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in problem.np_hyper.items()},
                  scores={k: v for k, v in scores.items() if _is_scalar(v)})


def _scored_sites(problem: Problem) -> list[str]:
    """The sites tables report: the spec's global latents (a user's model: every site)."""
    return list(problem.spec.latent_sites or problem.latent_sites)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, np.number)) and np.ndim(value) == 0


def run(name: str, backend: str = "nuts", data: Mapping[str, Any] | None = None, seed: int = 0,
        hyper: Mapping[str, Any] | None = None, truth: Mapping[str, Any] | None = None,
        **options: Any) -> Result:
    """Run one back-end on one model.

    Parameters
    ----------
    name : model name (`list_models`).
    backend : ``exact``, ``nuts``, ``hmc``, ``svi``, ``importance`` or one of the model's own.
    data : dict of arrays keyed by the model's data keys; None for ``simulate(name, seed=0)``.
    seed : the same seed gives the same draws.
    hyper : hyperparameters (CONCEPTS.md), defaults from the model.
    truth : the latent values behind simulated data (`simulate`'s second value), for the
        model's scores against the truth (adjusted Rand index); known when ``data`` is None.
    **options : back-end options: ``num_samples``, ``num_warmup``, ``num_chains`` (nuts, hmc),
        ``guide``, ``num_steps``, ``lr`` (svi), ``proposal`` (importance), ``progress``.

    Raises
    ------
    ZooError
        for any bad input, before inference starts.
    """
    seed = _check_seed(seed)
    spec = registry.get_model(name)
    registry.get_backend(spec, backend)  # an unknown back-end is reported before the data
    problem, truth = _prepare_problem(spec, data, hyper, truth)
    b, opts, reason = _plan(problem, backend, options)
    if reason:
        applicable = [k for k, x in registry.backends_for(problem.spec).items()
                      if not not_applicable(problem, x)]
        raise ZooError(f"model {name!r}: back-end {backend!r} does not apply: {reason}. "
                       f"Back-ends that apply: {', '.join(applicable)}")
    return _execute(problem, b, opts, seed, backend, truth)


def _parse_label(label: str) -> tuple[str, dict[str, Any]]:
    """``"svi:full_rank"`` means back-end svi with guide full_rank."""
    if isinstance(label, str) and ":" in label:
        backend, guide = label.split(":", 1)
        return backend, {"guide": guide}
    return label, {}


def compare(name: str, backends: Sequence[str] | None = None, data: Mapping[str, Any] | None = None,
            seed: int = 0, hyper: Mapping[str, Any] | None = None,
            options: Mapping[str, Mapping[str, Any]] | None = None, progress: bool | None = None,
            truth: Mapping[str, Any] | None = None, **common: Any) -> Comparison:
    """Run several back-ends on the same data and score each against the exact posterior.

    Parameters
    ----------
    backends : labels such as ``["exact", "nuts", "svi", "svi:full_rank", "cavi"]``; a label
        ``backend:guide`` picks an SVI guide family. None: every back-end of the model, those
        that do not apply listed with the reason, and those the model leaves out by default
        (`ModelSpec.skip_by_default`, too slow) listed with why.
    truth : the simulated latent values, for the model's scores against the truth (known
        when ``data`` is None).
    options : per-label options, ``{"nuts": {"num_samples": 500}}``.
    **common : options given to every back-end that accepts them (``num_samples=500``).

    Every input is validated before the first back-end starts.
    """
    seed = _check_seed(seed)
    spec = registry.get_model(name)
    labels = list(backends) if backends is not None else list(registry.backends_for(spec))
    skipped = {k: v for k, v in spec.skip_by_default.items() if backends is None and k in labels}
    labels = [k for k in labels if k not in skipped]
    options = dict(options or {})
    for k in options:
        if k not in labels:
            raise ZooError(f"model {name!r}: options given for {k!r}, which is not among the back-ends {labels}")
    accepted = {o for label in labels for o in registry.get_backend(spec, _parse_label(label)[0]).options}
    for k in common:
        if k not in accepted:
            raise ZooError(f"model {name!r}: option {k!r} is accepted by none of the back-ends {labels}")
    problem, truth = _prepare_problem(spec, data, hyper, truth)  # one problem for every back-end
    plans = []
    for label in labels:
        backend, extra = _parse_label(label)
        b = registry.get_backend(spec, backend)
        opts = {k: v for k, v in common.items() if k in b.options}
        opts.update(extra, **options.get(label, {}))
        if progress is not None:
            opts["progress"] = progress
        plans.append((label, *_plan(problem, backend, opts)))
    results: dict[str, Result] = {}
    rows = [{"backend": k, "note": f"left out by default (name it to run it): {why}"} for k, why in skipped.items()]
    scalar_frames = []
    exact = problem.exact()
    exact_draws = exact.sample(np.random.default_rng(seed + 1), EXACT_REFERENCE_DRAWS) if exact else None
    for label, b, opts, reason in tqdm(plans, desc=f"compare {name}", disable=not progress):
        if reason:
            rows.append({"backend": label, "note": f"not applicable: {reason}"})
            continue
        try:
            result = _execute(problem, b, opts, seed, label, truth)
        except InferenceError as e:  # one back-end breaking down does not hide the others
            rows.append({"backend": label, "note": f"failed: {e}"})
            continue
        results[label] = result
        sites = _scored_sites(problem) if result.idata.get("posterior") is not None else []
        scalars = arviz_io.scalar_stats(result.idata, sites)
        if exact is not None and sites:
            scalars = scoring.scalar_scores(scalars, {k: result.idata.posterior[k].values for k in sites},
                                            exact, exact_draws)
        row = scoring.table_row(label, result, scalars, exact.log_evidence if exact else None)
        extra_notes = [spec.relabel_note] if spec.relabel_note else []
        if exact is not None and exact.kind != "closed_form":
            extra_notes.append(f"scored against a stored {exact.kind} reference, not a closed form")
        row["note"] = "; ".join(n for n in [row["note"], *extra_notes] if n)
        rows.append({**row, **result.scores})
        scalar_frames.append(scalars.assign(backend=label))
    scalars = pd.concat(scalar_frames, ignore_index=True) if scalar_frames else pd.DataFrame()
    return Comparison(name, scoring.make_table(rows), scalars, results, exact, _scored_sites(problem))


def register(name: str, model: Callable[..., Any], data: Mapping[str, Any], *,
             exact: Callable[[dict, dict], ExactPosterior] | None = None,
             seed_section: str = "", overwrite: bool = False) -> ModelSpec:
    """Bring your own Pyro model: every generic back-end and diagnostic then works on it.

    Parameters
    ----------
    name : the name to run it by.
    model : a Pyro model whose keyword arguments are the data keys (observed ones default to
        None). Latent sites are found by tracing it on ``data``.
    data : example data; it fixes the data keys, their number of dimensions and types, and is
        the model's default data. Keys that are observed sample sites are the observations;
        the others are covariates or sizes, kept when simulating.
    exact : optional exact posterior ``exact(data, hyper) -> ExactPosterior``.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ZooError(f"model name must be an identifier, got {name!r}")
    if name in registry.MODELS and registry.MODELS[name].model.__module__.startswith("models."):
        raise ZooError(f"model {name!r} is a built-in model and cannot be replaced")
    if not callable(model):
        raise ZooError(f"model {name!r}: the model must be a callable Pyro model, got {model!r}")
    params = inspect.signature(model).parameters
    keys = {}
    for k, v in data.items():
        if k not in params:
            raise ZooError(f"model {name!r}: data key {k!r} is not an argument of {model.__name__}")
        arr = np.asarray(v)
        keys[k] = DataKey(tuple(f"{k}_dim{i}" for i in range(arr.ndim)),
                          "long" if np.issubdtype(arr.dtype, np.integer) else "float", observed=False)
    draft = ModelSpec(name=name, model=model, data=keys, latent_sites=())
    tr = trace_model(draft, prepare_inputs(draft, data), {})
    observed = {k for k, s in tr.nodes.items() if s["type"] == "sample" and s.get("is_observed") and k in keys}
    keys = {k: DataKey(d.dims, d.dtype, observed=k in observed) for k, d in keys.items()}
    example = {k: np.asarray(v) for k, v in data.items()}
    spec = ModelSpec(
        name=name, model=model, data=keys, latent_sites=(), seed_section=seed_section, exact=exact,
        inputs=lambda rng, sizes, hyper: {k: v for k, v in example.items() if not keys[k].observed},
        example=example,
    )
    prepare(spec, data, None)  # validates the example data and the model once more
    registry.add_model(spec, overwrite=overwrite)
    return spec


def prepare_inputs(spec: ModelSpec, data: Mapping[str, Any]) -> dict[str, Any]:
    """Data converted as `prepare` would, without support checks (used to trace a new model)."""
    return _check_data(spec, data, {})[0]


def load(path: str | Path) -> Result:
    """Reload a `Result` saved by `Result.save` (netCDF, no pickle)."""
    path = Path(path)
    if not path.exists():
        raise ZooError(f"no saved result at {str(path)!r}")
    idata, meta = arviz_io.load(path)
    return Result(meta.get("model", ""), meta.get("backend", ""), idata, float(meta.get("seconds", 0.0)),
                  meta.get("diagnostics", {}), meta.get("options", {}), int(meta.get("seed", 0)),
                  meta.get("hyper", {}))

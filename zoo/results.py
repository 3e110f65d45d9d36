"""Results: what a back-end run returns (`Result`), several of them side by side (`Comparison`),
and how a back-end's raw draws become one (`execute`): relabelled, scored by the model's own
scores, packed into ArviZ InferenceData with log-likelihoods, and summarised.
"""
from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyro import poutine
from pyro.infer import Predictive

from zoo.core import arviz_io
from zoo.core.errors import ZooError
from zoo.core.files import write_text
from zoo.core.problem import DTYPE, Problem, float64, traceable
from zoo.core.spec import Backend, ExactPosterior
from zoo.inference.common import log_densities, single_thread


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
        model's own scores (`Scoring.diagnose`: peer log-likelihood, adjusted Rand index,
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


def scored_sites(problem: Problem) -> list[str]:
    """The sites tables report: the spec's global latents (a user's model: every site)."""
    return list(problem.spec.latent_sites or problem.latent_sites)


def execute(problem: Problem, backend: Backend, options: dict, seed: int, label: str,
            truth: Mapping[str, Any] | None = None) -> Result:
    """Run ``backend`` on ``problem`` with validated ``options`` and package what it returns.

    Everything runs in float64 (`zoo.core.problem.float64`). The fit alone is timed. Its draws
    are relabelled (`Scoring.relabel`), joined by the model's deterministic sites
    (`deterministic_draws`), given their pointwise log-likelihoods, scored by the model's own
    scores, and packed into InferenceData. Divergences, and for Markov chains an r_hat above
    1.01 or a bulk ESS below 100 per chain (`mixing_warnings`), raise a warning and are listed
    in ``diagnostics["warnings"]``.
    """
    spec = problem.spec
    with single_thread(), float64():
        start = time.perf_counter()
        fit = backend.fit(problem, seed=seed, **options)
        seconds = time.perf_counter() - start
        posterior = spec.scoring.relabel(fit.posterior) if spec.scoring.relabel and fit.posterior else fit.posterior
        log_lik = _log_likelihoods(problem, posterior)
        posterior = {**posterior, **deterministic_draws(problem, posterior)}
        scores = own_scores(problem, posterior, truth, fit.guide)
    rows = spec.scoring.local_rows
    if rows is not None:  # a few rows of each local latent are enough to look at
        posterior = {k: v if k in spec.latent_sites else v[:, :, :rows] for k, v in posterior.items()}
    idata = arviz_io.to_idata(
        posterior, sample_stats=fit.sample_stats, log_likelihood=log_lik,
        observed_data={k: problem.np_data[k] for k in problem.observed if k in problem.np_data},
        attrs={"model": problem.name, "backend": label, "seed": seed})
    diagnostics = _mixing(problem, idata) if posterior else {}
    diagnostics.update(fit.diagnostics, **scores)
    found = []
    if diagnostics.get("divergences"):
        found.append(f"model {problem.name!r}, back-end {label!r}: {diagnostics['divergences']} "
                     "divergent transitions; the draws may be biased")
    if backend.markov_chains and posterior:
        found += mixing_warnings(problem.name, label, diagnostics, idata.posterior.sizes["chain"])
    for message in found:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    if found:
        diagnostics["warnings"] = list(diagnostics.get("warnings", [])) + found
    return Result(problem.name, label, idata, seconds, diagnostics,
                  {k: v for k, v in options.items() if k != "progress"}, seed,
                  {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in problem.np_hyper.items()},
                  scores={k: v for k, v in scores.items() if _is_scalar(v)})


def own_scores(problem: Problem, posterior: dict[str, np.ndarray], truth: Mapping[str, Any] | None,
               guide: Any) -> dict[str, Any]:
    """The model's own scores (`Scoring.diagnose`) of a run's draws; a ``diagnose`` that takes
    a keyword ``guide`` is given the run's fitted guide (None without one)."""
    diagnose = problem.spec.scoring.diagnose
    if diagnose is None:
        return {}
    extra = {"guide": guide} if "guide" in inspect.signature(diagnose).parameters else {}
    return dict(diagnose(problem, posterior, dict(truth) if truth else None, **extra))


R_HAT_MAX = 1.01  # Vehtari et al. (2021)
ESS_PER_CHAIN_MIN = 100


def mixing_warnings(model: str, label: str, diagnostics: Mapping[str, Any], chains: int) -> list[str]:
    """The warning for Markov chains that have not mixed (Vehtari et al. 2021): r_hat above
    1.01 or bulk ESS below 100 per chain, with the numbers; an empty list when they are fine.
    A bulk ESS that is NaN (a chain that never moved) counts as too low."""
    r_hat, ess = diagnostics.get("r_hat_max", np.nan), diagnostics.get("ess_bulk_min", np.nan)
    poor = []
    if r_hat > R_HAT_MAX:
        poor.append(f"r_hat {r_hat:.3f} > {R_HAT_MAX}")
    if not ess >= ESS_PER_CHAIN_MIN * chains:
        poor.append(f"bulk ESS {ess:.0f} < {ESS_PER_CHAIN_MIN} per chain ({ESS_PER_CHAIN_MIN * chains} "
                    f"for {chains} chain{'s' if chains > 1 else ''})")
    if not poor:
        return []
    return [f"model {model!r}, back-end {label!r}: {' and '.join(poor)}: the chains have not mixed "
            "(Vehtari et al. 2021); run more warm-up and draws, or reparameterise the model"]


def deterministic_draws(problem: Problem, posterior: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Draws (chain, draw, ...) of the model's ``pyro.deterministic`` sites: the model replayed
    conditioned on every draw of the latent sites.

    The replay is vectorised with `pyro.infer.Predictive` (``parallel=True``) and checked
    against one-draw replays at the first and last draw; a model that does not broadcast
    against Predictive's outer plate (it raises, or gives other values) is replayed one draw
    at a time. Flat-prior sites are never sampled (`zoo.core.problem.traceable`).
    """
    latent = {k: v for k, v in posterior.items() if k in problem.sites}
    if not problem.deterministic or not latent:
        return {}
    chains, draws = next(iter(latent.values())).shape[:2]
    num = chains * draws
    flat = {k: torch.as_tensor(v.reshape((num,) + v.shape[2:]),
                               dtype=torch.long if problem.sites[k].discrete else DTYPE) for k, v in latent.items()}
    model = traceable(problem.model)
    sites = list(problem.deterministic)

    def one(i: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            tr = poutine.trace(poutine.condition(model, {k: v[i] for k, v in flat.items()})).get_trace()
        return {k: tr.nodes[k]["value"].detach() for k in sites}

    ends = [one(0), one(num - 1)]
    try:
        replay = Predictive(model, posterior_samples=flat, return_sites=sites, parallel=True)()
        values = {k: replay[k].detach().reshape((num,) + ends[0][k].shape) for k in sites}
        same = all(torch.allclose(values[k][i], end[k], rtol=1e-10, atol=1e-12, equal_nan=True)
                   for k in sites for i, end in zip((0, -1), ends))
    except (RuntimeError, ValueError, IndexError):  # the model does not broadcast: one at a time
        same = False
    if not same:
        rows = [one(i) for i in range(num)]
        values = {k: torch.stack([row[k] for row in rows]) for k in sites}
    return {k: v.reshape((chains, draws) + v.shape[1:]).numpy() for k, v in values.items()}


def _log_likelihoods(problem: Problem, posterior: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pointwise log-likelihoods (chain, draw, ...) of every observed site at every draw;
    discrete sites are summed out (mixture densities)."""
    given = {k: v for k, v in posterior.items() if not problem.sites[k].discrete} or posterior
    if not given:
        return {}
    chains, draws = next(iter(given.values())).shape[:2]
    _, log_lik = log_densities(problem, {k: v.reshape((-1,) + v.shape[2:]) for k, v in given.items()})
    return {k: v.reshape((chains, draws) + v.shape[1:]) for k, v in log_lik.items()}


def _mixing(problem: Problem, idata: Any) -> dict[str, float]:
    stats = arviz_io.scalar_stats(idata, scored_sites(problem))
    return {"r_hat_max": float(stats["r_hat"].max()), "ess_bulk_min": float(stats["ess_bulk"].min()),
            "ess_tail_min": float(stats["ess_tail"].min())}


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, np.number)) and np.ndim(value) == 0


def load(path: str | Path) -> Result:
    """Reload a `Result` saved by `Result.save` (netCDF, no pickle)."""
    path = Path(path)
    if not path.exists():
        raise ZooError(f"no saved result at {str(path)!r}")
    idata, meta = arviz_io.load(path)
    missing = [k for k in ("model", "backend", "seed") if k not in meta]
    if missing:
        raise ZooError(f"{str(path)!r} was not written by zoo's Result.save: its metadata lacks "
                       f"{', '.join(missing)}; read it with arviz.from_netcdf instead")
    return Result(meta["model"], meta["backend"], idata, float(meta.get("seconds", 0.0)),
                  meta.get("diagnostics", {}), meta.get("options", {}), int(meta["seed"]), meta.get("hyper", {}))

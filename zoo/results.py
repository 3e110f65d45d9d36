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

from zoo.core import arviz_io
from zoo.core.errors import ZooError
from zoo.core.files import write_text
from zoo.core.problem import Problem
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

    The fit alone is timed. Its draws are relabelled (`Scoring.relabel`), given their
    pointwise log-likelihoods, scored by the model's own scores, and packed into
    InferenceData; divergences raise a warning.
    """
    spec = problem.spec
    with single_thread():
        start = time.perf_counter()
        fit = backend.fit(problem, seed=seed, **options)
        seconds = time.perf_counter() - start
        posterior = spec.scoring.relabel(fit.posterior) if spec.scoring.relabel and fit.posterior else fit.posterior
        log_lik = _log_likelihoods(problem, posterior)
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
    if diagnostics.get("divergences"):
        warnings.warn(f"model {problem.name!r}, back-end {label!r}: {diagnostics['divergences']} "
                      "divergent transitions; the draws may be biased", RuntimeWarning, stacklevel=3)
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

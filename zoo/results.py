"""Results: what a back-end run returns (`Result`), several of them side by side (`Comparison`),
and how a back-end's raw draws become one (`execute`): relabelled, scored by the model's own
scores, packed into ArviZ InferenceData (`zoo.packaging`), and diagnosed honestly for what
the draws are (`zoo.core.spec.DRAW_KINDS`): r_hat and ESS for Markov chains, the number of
draws or the weight ESS for independent or resampled draws, nothing for a point estimate.
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

from zoo import packaging, scoring
from zoo.core import arviz_io
from zoo.core.errors import ZooError
from zoo.core.files import write_text
from zoo.core.problem import Problem, float64
from zoo.core.spec import Backend, ExactPosterior
from zoo.inference.common import single_thread

RESULT_PLOTS = ("trace", "rank", "pair", "energy", "ppc", "prior_ppc", "loo_pit", "elbo", "forest", "density")
"""Plots of one result (`Result.plot`)."""
COMPARISON_PLOTS = ("forest", "density", "elbo")
"""Plots that put every back-end of a `Comparison` side by side; the others show one back-end."""


@dataclass
class Result:
    """One back-end's posterior on one model and data set.

    Attributes
    ----------
    idata : arviz.InferenceData with posterior (chain, draw, ...) including deterministic
        sites, sample_stats (``lp``, the sampler's statistics, optimisation traces along
        ``step``), log_likelihood, posterior_predictive, prior, prior_predictive,
        observed_data and constant_data (`zoo.packaging`); groups left out say why in
        ``idata.attrs`` (``no_prior``, ...).
    seconds : wall time of the inference itself (not of validation or post-processing).
    diagnostics : r_hat_max, ess_bulk_min, ess_tail_min (honest for the kind of draws, see
        ``kind``), PSIS-LOO (``elpd_loo``, ``elpd_loo_se``, ``p_loo``, ``loo_k_bad``,
        ``loo_k_max``, or ``loo_note`` saying why not), ``bfmi_min`` (or ``bfmi_note``), what
        the back-end measured (divergences, elbo and elbo_trace, log_evidence, weight_ess,
        pareto_k) and the model's own scores (`Scoring.diagnose`).
    scores : the scalar entries of the model's own scores (columns of the comparison table).
    kind : what the draws are: ``mcmc``, ``independent``, ``resampled`` or ``point``
        (`zoo.core.spec.DRAW_KINDS`).
    sites : the latent sites tables and plots show.
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
    kind: str = "mcmc"
    sites: list[str] = field(default_factory=list)

    def summary(self, **kwargs: Any) -> pd.DataFrame:
        """ArviZ summary of the posterior (mean, sd, HDI, ESS, r_hat). For draws that are not
        Markov chains (``kind``), r_hat is NaN and ArviZ's ESS estimates the number of draws
        (independent) or overstates a resample: ``diagnostics`` holds the honest values."""
        return arviz_io.summary(self.idata, **kwargs)

    def draws(self, site: str) -> np.ndarray:
        """Draws of a latent site flattened over chains: shape (chain*draw, ...)."""
        v = self.idata.posterior[site].values
        return v.reshape((-1,) + v.shape[2:])

    def loo(self) -> dict[str, float]:
        """PSIS-LOO of this result: ``elpd_loo``, ``elpd_loo_se``, ``p_loo``, ``loo_k_bad``
        (share of observations with Pareto k > 0.7) and ``loo_k_max``.

        Raises
        ------
        ZooError
            saying why LOO does not apply (a point estimate, no global latent sites, ...).
        """
        if "elpd_loo" not in self.diagnostics:
            raise ZooError(f"model {self.model!r}, back-end {self.backend!r}: no LOO: "
                           f"{self.diagnostics.get('loo_note', 'no log-likelihood')}")
        return {k: self.diagnostics[k] for k in scoring.LOO_KEYS}

    def plot_reason(self, kind: str) -> str | None:
        """Why plot ``kind`` does not apply to this result, or None when it does."""
        if kind not in RESULT_PLOTS:
            raise ZooError(f"unknown plot {kind!r}; plots: {', '.join(RESULT_PLOTS)}")
        idata, d = self.idata, self.diagnostics
        if kind == "elbo":
            return None if "elbo_trace" in d else \
                f"back-end {self.backend!r} records no ELBO trace (it does not maximise an ELBO)"
        if idata.get("posterior") is None:
            return idata.attrs.get("no_posterior", "no posterior")
        if kind in ("trace", "rank", "pair", "density") and self.kind == "point":
            return "a point estimate: its draws have no spread to show"
        if kind == "rank" and (self.kind != "mcmc" or idata.posterior.sizes["chain"] < 2):
            return (f"rank plots compare Markov chains; these are {self.kind} draws in one chain"
                    if self.kind != "mcmc" else "one chain: nothing to compare its ranks with")
        if kind == "pair" and sum(int(np.prod(idata.posterior[s].shape[2:])) for s in self.sites) < 2:
            return "a pair plot needs two or more latent scalars"
        if kind == "energy":
            if self.kind != "mcmc":
                return f"the energy plot is for Hamiltonian Monte Carlo; these are {self.kind} draws"
            if "energy" not in idata.get("sample_stats", {}):
                return "the sampler recorded no energy in sample_stats"
        if kind == "ppc" and idata.get("posterior_predictive") is None:
            return idata.attrs.get("no_posterior_predictive", "no posterior predictive draws")
        if kind == "prior_ppc" and idata.get("prior_predictive") is None:
            return idata.attrs.get("no_prior_predictive", "no prior predictive draws")
        if kind == "loo_pit":
            if "elpd_loo" not in d:
                return d.get("loo_note", "no LOO")
            if idata.get("posterior_predictive") is None:
                return idata.attrs.get("no_posterior_predictive", "no posterior predictive draws")
            values = [idata.observed_data[v].values for v in idata.observed_data.data_vars]
            if all(np.array_equal(v, np.round(v)) for v in values):
                return ("the observations are discrete: their LOO-PIT is not uniform even under a "
                        "calibrated predictive (use the ppc plot)")
        return None

    def plot(self, kind: str, out: str | Path | None = None) -> Any:
        """One of the usual ArviZ plots of this result, as a matplotlib figure.

        Parameters
        ----------
        kind : ``trace``, ``rank`` (chains' ranks), ``pair`` (divergences marked), ``energy``
            (with BFMI), ``ppc`` (posterior predictive check), ``prior_ppc``, ``loo_pit``,
            ``elbo`` (the optimisation trace), ``forest`` or ``density``.
        out : a ``.png`` path, or a folder for ``<kind>.png``; None writes nothing.

        Raises
        ------
        ZooError
            saying why ``kind`` does not apply to this result (`plot_reason`).
        """
        reason = self.plot_reason(kind)
        if reason:
            raise ZooError(f"model {self.model!r}, back-end {self.backend!r}: no {kind} plot: {reason}")
        caption = _CAPTIONS[kind] if kind != "trace" or self.kind == "mcmc" else f"{self.kind} draws, in one chain"
        title = f"{self.model} ({self.backend}): {caption}"
        idata, sites = self.idata, self.sites
        observed = list(idata.observed_data.data_vars) if idata.get("observed_data") is not None else []
        if kind == "trace":
            fig = arviz_io.plot_trace(idata, sites, title)
        elif kind == "rank":
            fig = arviz_io.plot_rank(idata, sites, title)
        elif kind == "pair":
            fig = arviz_io.plot_pair(idata, sites, title)
        elif kind == "energy":
            fig = arviz_io.plot_energy(idata, title)
        elif kind in ("ppc", "prior_ppc"):
            group = "prior" if kind == "prior_ppc" else "posterior"
            fig = arviz_io.plot_ppc(idata, [v for v in observed if v in idata[f"{group}_predictive"]], title, group)
        elif kind == "loo_pit":
            fig = arviz_io.plot_loo_pit(idata, [v for v in observed if v in idata.posterior_predictive], title)
        elif kind == "elbo":
            fig = arviz_io.plot_elbo({self.backend: np.asarray(self.diagnostics["elbo_trace"])}, title)
        elif kind == "forest":
            fig = arviz_io.plot_forest({self.backend: idata}, sites, title)
        else:
            fig = arviz_io.plot_density({self.backend: idata}, sites, title)
        if out is not None:
            out = Path(out)
            arviz_io.save_figure(fig, out if out.suffix == ".png" else out / f"{kind}.png")
        return fig

    def save(self, path: str | Path) -> Path:
        """Write the result to a netCDF file atomically; reload it with `zoo.load`. Optimisation
        traces are stored as arrays in ``sample_stats``, not in the metadata."""
        traced = packaging.traces(self.diagnostics)
        meta = {"model": self.model, "backend": self.backend, "seconds": self.seconds,
                "diagnostics": {k: v for k, v in self.diagnostics.items() if k not in traced},
                "options": self.options, "seed": self.seed, "hyper": self.hyper, "kind": self.kind,
                "sites": self.sites, "scores": self.scores}
        return arviz_io.save(self.idata, path, meta)


_CAPTIONS = {
    "trace": "draws by chain", "rank": "rank plots by chain (uniform when chains mix)",
    "pair": "joint draws", "energy": "energy and BFMI",
    "ppc": "posterior predictive check", "prior_ppc": "prior predictive check",
    "loo_pit": "LOO-PIT calibration", "elbo": "optimisation trace",
    "forest": "94% intervals", "density": "marginal posteriors",
}


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

    def plot_reason(self, kind: str) -> str | None:
        """Why the side-by-side plot ``kind`` (`COMPARISON_PLOTS`) does not apply, or None."""
        if kind == "elbo":
            return None if any("elbo_trace" in r.diagnostics for r in self.results.values()) else \
                "no back-end here records an ELBO trace"
        if not self._with_posterior() or not self.sites:
            return "no back-end here has posterior draws of a latent site"
        if kind == "density" and all(r.kind == "point" for r in self._with_posterior().values()):
            return "every back-end here is a point estimate"
        return None

    def _with_posterior(self) -> dict[str, Result]:
        return {k: r for k, r in self.results.items() if r.idata.get("posterior") is not None}

    def plot(self, kind: str = "forest", out: str | Path | None = None, backend: str | None = None) -> Any:
        """A plot of the comparison, as a matplotlib figure.

        Parameters
        ----------
        kind : ``forest``, ``density`` (the exact posterior as its closed-form density where
            there is one) and ``elbo`` show every back-end side by side; ``trace``, ``rank``,
            ``pair``, ``energy``, ``ppc``, ``prior_ppc`` and ``loo_pit`` show the back-end
            named by ``backend`` (`Result.plot`). A folder instead of a kind (the older
            ``cmp.plot("out/")``) writes the side-by-side plots that apply there and returns
            the files (`save_plots` writes every back-end's plots too).
        out : a ``.png`` path, or a folder for ``<kind>.png``; None writes nothing.
        backend : the back-end label, for the plots of one back-end.

        Raises
        ------
        ZooError
            saying why the plot does not apply.
        """
        if kind not in RESULT_PLOTS:
            return self.save_plots(kind, each_backend=False)
        where = f"model {self.model!r}: "
        if kind not in COMPARISON_PLOTS or backend is not None:
            if backend is None:
                raise ZooError(f"{where}the {kind} plot shows one back-end: name it, backend=..., "
                               f"one of {', '.join(self.results)}")
            if backend not in self.results:
                raise ZooError(f"{where}no result for back-end {backend!r}; results: {', '.join(self.results)}")
            return self.results[backend].plot(kind, out)
        reason = self.plot_reason(kind)
        if reason:
            raise ZooError(f"{where}no {kind} plot: {reason}")
        title = f"{self.model}: {_CAPTIONS[kind]} by back-end"
        if kind == "elbo":
            curves = {k: np.asarray(r.diagnostics["elbo_trace"]) for k, r in self.results.items()
                      if "elbo_trace" in r.diagnostics}
            fig = arviz_io.plot_elbo(curves, title, self.exact.log_evidence if self.exact else None)
        else:
            results = self._with_posterior()
            idatas = {k: r.idata for k, r in results.items()}
            points = [k for k, r in results.items() if r.kind == "point"]
            if kind == "forest":
                fig = arviz_io.plot_forest(idatas, self.sites, title)
            else:
                marginal = self.exact.marginal if self.exact is not None else None
                fig = arviz_io.plot_density(idatas, self.sites, title, marginal, points)
        if out is not None:
            out = Path(out)
            arviz_io.save_figure(fig, out if out.suffix == ".png" else out / f"{kind}.png")
        return fig

    def save_plots(self, out: str | Path, each_backend: bool = True) -> list[Path]:
        """Every plot that applies, as PNG files in ``out``: ``forest``, ``density`` and
        ``elbo`` over all back-ends and, with ``each_backend``, ``prior_ppc.png`` (the same
        prior under every back-end) and ``<kind>_<backend>.png`` for each back-end's own plots."""
        import matplotlib.pyplot as plt

        out = Path(out)
        files = []
        for kind in COMPARISON_PLOTS:
            if self.plot_reason(kind) is None:
                plt.close(self.plot(kind, out / f"{kind}.png"))
                files.append(out / f"{kind}.png")
        for result in self.results.values() if each_backend else ():  # the prior: one back-end shows it
            if result.plot_reason("prior_ppc") is None:
                plt.close(result.plot("prior_ppc", out / "prior_ppc.png"))
                files.append(out / "prior_ppc.png")
                break
        for label, result in self.results.items() if each_backend else ():
            for kind in RESULT_PLOTS:
                if kind in COMPARISON_PLOTS or kind == "prior_ppc" or result.plot_reason(kind) is not None:
                    continue
                path = out / f"{kind}_{label.replace(':', '_')}.png"
                plt.close(result.plot(kind, path))
                files.append(path)
        return files

    def save(self, out: str | Path) -> list[Path]:
        """Write table.csv, table.md, one netCDF per back-end and the plots into ``out``."""
        out = Path(out)
        files = [write_text(out / "table.csv", self.table.to_csv(index=False)),
                 write_text(out / "table.md", self.table.to_markdown(index=False, floatfmt=".4g")),
                 write_text(out / "scalars.csv", self.scalars.to_csv(index=False))]
        files += [r.save(out / f"{label.replace(':', '_')}.nc") for label, r in self.results.items()]
        return files + self.save_plots(out)


def scored_sites(problem: Problem) -> list[str]:
    """The sites tables report: the spec's global latents (a user's model: every site)."""
    return list(problem.spec.latent_sites or problem.latent_sites)


def global_sites(problem: Problem) -> list[str]:
    """The model's global latent sites: the spec's, or every site of a user's model (a model
    of the catalogue without any, such as the VAE, has only local latents and networks)."""
    spec = problem.spec
    return list(spec.latent_sites) if spec.latent_sites or spec.source != "user" else list(problem.latent_sites)


@dataclass
class Draws:
    """A back-end's draws without what `execute` adds to a `Result` (InferenceData, PSIS-LOO,
    the model's scores, posterior predictive and prior draws): what a caller that runs many
    fits and reads only the draws needs (SBC's simulations, Thompson sampling's refits).

    Attributes
    ----------
    posterior : latent site to (chain, draw, ...) draws, relabelled (`Scoring.relabel`).
    kind : what the draws are (`zoo.core.spec.DRAW_KINDS`).
    seconds : wall time of the inference itself.
    diagnostics : what the back-end measured, and r_hat_max, ess_bulk_min and ess_tail_min
        of the scored sites, honest for ``kind`` (`zoo.scoring.mixing_summary`).
    """

    model: str
    backend: str
    posterior: dict[str, np.ndarray]
    kind: str
    seconds: float
    diagnostics: dict[str, Any]

    def draws(self, site: str) -> np.ndarray:
        """Draws of a latent site flattened over chains: shape (chain*draw, ...)."""
        v = self.posterior[site]
        return v.reshape((-1,) + v.shape[2:])


def _fit(problem: Problem, backend: Backend, options: dict, seed: int) -> tuple[Any, dict[str, np.ndarray], float]:
    """Run ``backend`` in float64 on one thread: its `Fit`, the relabelled draws and the
    seconds the fit alone took."""
    relabel = problem.spec.scoring.relabel
    with single_thread(), float64():
        start = time.perf_counter()
        fit = backend.fit(problem, seed=seed, **options)
        seconds = time.perf_counter() - start
        posterior = relabel(fit.posterior) if relabel and fit.posterior else fit.posterior
    return fit, posterior, seconds


def _warn(problem: Problem, label: str, kind: str, diagnostics: dict[str, Any], chains: int) -> None:
    """Warn of divergences and, for Markov chains, of poor mixing; list the warnings in
    ``diagnostics["warnings"]``."""
    found = []
    if diagnostics.get("divergences"):
        found.append(f"model {problem.name!r}, back-end {label!r}: {diagnostics['divergences']} "
                     "divergent transitions; the draws may be biased")
    if kind == "mcmc" and chains:
        found += scoring.mixing_warnings(problem.name, label, diagnostics, chains)
    for message in found:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    if found:
        diagnostics["warnings"] = list(diagnostics.get("warnings", [])) + found


def execute(problem: Problem, backend: Backend, options: dict, seed: int, label: str,
            truth: Mapping[str, Any] | None = None) -> Result:
    """Run ``backend`` on ``problem`` with validated ``options`` and package what it returns.

    Everything runs in float64 (`zoo.core.problem.float64`). The fit alone is timed. Its draws
    are relabelled (`Scoring.relabel`), scored by the model's own scores, packed into
    InferenceData with every group (`zoo.packaging`) and diagnosed for their kind
    (`zoo.scoring.diagnostics`). Divergences, and for Markov chains an r_hat above 1.01 or a
    bulk ESS below 100 per chain (`zoo.scoring.mixing_warnings`), raise a warning and are
    listed in ``diagnostics["warnings"]``.
    """
    spec = problem.spec
    fit, posterior, seconds = _fit(problem, backend, options, seed)
    with single_thread(), float64():
        scores = own_scores(problem, posterior, truth, fit.guide)
        idata = packaging.package(problem, fit, posterior, label, seed)
    sites = scored_sites(problem) if posterior else []
    local = [k for k in problem.sites if k not in spec.latent_sites and not problem.sites[k].discrete]
    diagnostics = scoring.diagnostics(idata, fit.kind, sites, global_sites(problem), fit.diagnostics,
                                      conditional_on=local if global_sites(problem) else [])
    diagnostics.update(fit.diagnostics, **scores)
    _warn(problem, label, fit.kind, diagnostics, idata.posterior.sizes["chain"] if posterior else 0)
    return Result(problem.name, label, idata, seconds, diagnostics,
                  {k: v for k, v in options.items() if k != "progress"}, seed,
                  {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in problem.np_hyper.items()},
                  scores={k: v for k, v in scores.items() if _is_scalar(v)}, kind=fit.kind, sites=sites)


def execute_draws(problem: Problem, backend: Backend, options: dict, seed: int, label: str) -> Draws:
    """`execute` without the packaging: the same fit, draws and seed, timed and relabelled the
    same way, with the same warnings, and mixing diagnosed on the scored sites only (no
    InferenceData, LOO or scores)."""
    fit, posterior, seconds = _fit(problem, backend, options, seed)
    diagnostics: dict[str, Any] = {}
    sites = scored_sites(problem) if posterior else []
    if sites:
        idata = arviz_io.to_idata({"posterior": {k: posterior[k] for k in sites}}, {})
        diagnostics.update(scoring.mixing_summary(idata, sites, fit.kind, fit.diagnostics.get("weight_ess")))
    diagnostics.update(fit.diagnostics)  # what the back-end measured wins, as in `execute`
    _warn(problem, label, fit.kind, diagnostics, next(iter(posterior.values())).shape[0] if posterior else 0)
    return Draws(problem.name, label, posterior or {}, fit.kind, seconds, diagnostics)


def own_scores(problem: Problem, posterior: dict[str, np.ndarray], truth: Mapping[str, Any] | None,
               guide: Any) -> dict[str, Any]:
    """The model's own scores (`Scoring.diagnose`) of a run's draws; a ``diagnose`` that takes
    a keyword ``guide`` is given the run's fitted guide (None without one)."""
    diagnose = problem.spec.scoring.diagnose
    if diagnose is None:
        return {}
    extra = {"guide": guide} if "guide" in inspect.signature(diagnose).parameters else {}
    return dict(diagnose(problem, posterior, dict(truth) if truth else None, **extra))


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
    diagnostics = dict(meta.get("diagnostics", {}))
    stats = idata.get("sample_stats")
    if stats is not None:  # the optimisation traces, stored as arrays
        diagnostics.update({k: stats[k].values.tolist() for k in stats.data_vars if k.endswith("_trace")})
    return Result(meta["model"], meta["backend"], idata, float(meta.get("seconds", 0.0)),
                  diagnostics, meta.get("options", {}), int(meta["seed"]), meta.get("hyper", {}),
                  meta.get("scores", {}), meta.get("kind", "mcmc"), meta.get("sites", []))

"""Every call into ArviZ lives here, so a move to ArviZ 1.x (Python >= 3.12) touches one file.

The zoo builds InferenceData with ``az.from_dict`` from the arrays a back-end returns, rather
than ``az.from_pyro``, which takes MCMC only, drops log-likelihoods of enumerated models and
sorts chains as text.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd

from zoo.core.files import atomic_write, jsonable


def to_idata(posterior: Mapping[str, np.ndarray], *, sample_stats: Mapping[str, np.ndarray] | None = None,
             log_likelihood: Mapping[str, np.ndarray] | None = None,
             observed_data: Mapping[str, np.ndarray] | None = None,
             attrs: Mapping[str, Any] | None = None) -> az.InferenceData:
    """InferenceData with groups posterior (chain, draw, ...), sample_stats, log_likelihood
    and observed_data. Observed sites get their own dims so two of them never broadcast."""
    dims = {k: [f"{k}_obs_{i}" for i in range(np.ndim(v))] for k, v in (observed_data or {}).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = az.from_dict(posterior=dict(posterior), sample_stats=dict(sample_stats or {}) or None,
                             log_likelihood=dict(log_likelihood or {}) or None,
                             observed_data=dict(observed_data or {}) or None, dims=dims,
                             attrs=dict(attrs or {}))
    return idata


def scalar_stats(idata: az.InferenceData, var_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per latent scalar of ``var_names`` (default all): mean, sd, bulk and tail ESS, r_hat
    (NaN for a single chain). Empty without a posterior group (a density model)."""
    if idata.get("posterior") is None or (var_names is not None and not var_names):
        return pd.DataFrame(columns=["var", "index", "name", "mean", "sd", "ess_bulk", "ess_tail", "r_hat"])
    post = idata.posterior if var_names is None else idata.posterior[list(var_names)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess_bulk = az.ess(post, method="bulk")
        ess_tail = az.ess(post, method="tail")
        rhat = az.rhat(post) if post.sizes["chain"] > 1 else None
    rows = []
    for var in post.data_vars:
        values = post[var].values
        flat = values.reshape(values.shape[:2] + (-1,))
        shape = values.shape[2:]
        for j in range(flat.shape[-1]):
            idx = np.unravel_index(j, shape) if shape else ()
            name = var + (f"[{','.join(map(str, idx))}]" if shape else "")
            sd = float(flat[..., j].std(ddof=1))
            mean = float(flat[..., j].mean())
            # a point estimate (MAP, EM) has no ESS; repeated floats can differ in the last bit
            constant = np.nan if sd <= 1e-12 * (1 + abs(mean)) else 1.0
            rows.append({
                "var": var, "index": idx, "name": name,
                "mean": mean, "sd": sd,
                "ess_bulk": constant * float(np.asarray(ess_bulk[var].values)[idx]),
                "ess_tail": constant * float(np.asarray(ess_tail[var].values)[idx]),
                "r_hat": float(np.asarray(rhat[var].values)[idx]) if rhat is not None else float("nan"),
            })
    return pd.DataFrame(rows)


def summary(idata: az.InferenceData, **kwargs: Any) -> pd.DataFrame:
    """ArviZ's summary table of the posterior."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.summary(idata, **kwargs)


def pareto_k(log_weights: np.ndarray) -> float:
    """Pareto k of the importance weights' tail (PSIS, Vehtari et al.)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k = az.psislw(np.asarray(log_weights, dtype=float).copy())
    return float(k)


def save(idata: az.InferenceData, path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Save to netCDF atomically; ``meta`` (JSON-serialisable) goes into the posterior's attrs."""
    path = Path(path)
    idata = idata.copy()
    idata.posterior.attrs["zoo"] = json.dumps(meta, default=jsonable)
    atomic_write(path, lambda tmp: idata.to_netcdf(tmp))
    return path


def load(path: str | Path) -> tuple[az.InferenceData, dict[str, Any]]:
    """Load InferenceData saved by `save` and its metadata (no pickle involved)."""
    idata = az.from_netcdf(str(path))
    idata.load()
    meta = json.loads(idata.posterior.attrs.get("zoo", "{}"))
    return idata, meta


def plot_comparison(idatas: Mapping[str, az.InferenceData], out: str | Path, title: str,
                    var_names: Sequence[str] | None = None) -> list[Path]:
    """Forest plot and marginal densities of ``var_names`` (default all) for every back-end
    over the same axes, as PNG files."""
    import matplotlib.pyplot as plt

    out = Path(out)
    names: Sequence[str] = list(idatas)
    data = [idatas[n] for n in names]
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variables = list(var_names or data[0].posterior.data_vars)
        fig, axes = plt.subplots(1, len(variables), squeeze=False,
                                 figsize=(4.5 * len(variables), 1.5 + 0.4 * len(names) * _num_scalars(data[0], variables)))
        for var, ax in zip(variables, axes[0]):  # one panel per variable: each its own scale
            az.plot_forest(data, model_names=names, var_names=[var], combined=True, hdi_prob=0.94,
                           ax=ax, legend=var == variables[-1])
            ax.set_title(var)
        fig.suptitle(f"{title}: 94% intervals by back-end")
        files.append(_savefig(fig, out / "forest.png"))
        plt.close(fig)
        axes = az.plot_density(data, data_labels=names, var_names=variables, hdi_prob=0.999, shade=0.05)
        fig = np.atleast_1d(axes).ravel()[0].get_figure()
        fig.suptitle(f"{title}: marginal posteriors by back-end")
        files.append(_savefig(fig, out / "density.png"))
        plt.close(fig)
    return files


def _num_scalars(idata: az.InferenceData, variables: Sequence[str]) -> int:
    return int(sum(np.prod(idata.posterior[v].shape[2:], dtype=int) for v in variables))


def _savefig(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))


def rhat_of(values: np.ndarray) -> np.ndarray:
    """Split r_hat (rank-normalised, ArviZ's default) of every entry of an array shaped
    ``(chain, draw, ...)``; an array of the trailing shape, NaN everywhere for one chain."""
    values = np.asarray(values, dtype=float)
    if values.shape[0] < 2:
        return np.full(values.shape[2:], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(az.rhat(az.convert_to_dataset({"v": values}))["v"].values, dtype=float)


def plot_rank_ecdf(ranks: Mapping[str, np.ndarray], num_draws: int, path: str | Path, title: str,
                   seed: int = 0, ci_prob: float = 0.95) -> Path:
    """ECDF-difference plot of SBC ranks against the uniform distribution on 0..num_draws, one
    panel per scalar, with simultaneous confidence bands (Säilynoja, Bürkner and Vehtari 2022),
    written as a PNG file."""
    import matplotlib.pyplot as plt
    from scipy import stats

    uniform = stats.randint(0, num_draws + 1)
    eval_points = np.unique(np.linspace(0, num_draws, min(num_draws + 1, 100)).round())
    names = list(ranks)
    fig, axes = plt.subplots(1, len(names), squeeze=False, figsize=(3.6 * len(names), 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, ax in zip(names, axes[0]):
            az.plot_ecdf(np.array(ranks[name], dtype=float), eval_points=eval_points, cdf=uniform.cdf, difference=True,
                         confidence_bands="simulated", ci_prob=ci_prob, rvs=uniform.rvs,
                         random_state=np.random.default_rng(seed), ax=ax)
            ax.axhline(0, color="k", lw=0.5)
            ax.set_title(name)
            ax.set_xlabel(f"rank among {num_draws} draws")
        axes[0][0].set_ylabel(f"ECDF - uniform CDF, {ci_prob:.0%} band")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = _savefig(fig, Path(path))
    plt.close(fig)
    return out

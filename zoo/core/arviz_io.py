"""Every call into ArviZ lives here, so a move to ArviZ 1.x (Python >= 3.12) touches one file.

The zoo builds InferenceData with ``az.dict_to_dataset`` from the arrays a back-end returns,
rather than ``az.from_pyro``, which takes MCMC only, drops log-likelihoods of enumerated models
and sorts chains as text. ArviZ's chatter (its daily FutureWarning about the coming refactor,
warnings about one chain or a constant draw) is silenced here, at each call, and nowhere else:
what the zoo measures from such cases (r_hat NaN for one chain) it reports itself.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from zoo.core.files import atomic_write, jsonable

with warnings.catch_warnings():  # "ArviZ is undergoing a major refactor", once a day at import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

NO_CHAIN_GROUPS = ("observed_data", "constant_data")
MAX_SCALARS = 6  # scalars shown in a trace, rank or density plot (the first of each site first)
PAIR_SCALARS = 3  # scalars in a pair plot
FIGURE_WIDTH = 10.0  # inches: a page
ELBO_PANELS = 3  # optimisation-trace panels to a row (7 in one row overlapped their labels)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the warnings a call into ArviZ (and xarray, numpy under it) prints, and its log
    messages ("Shape validation failed" for one chain). ArviZ 0.23 logs through ``arviz._log``,
    a Logger it builds itself and never registers, so ``logging.getLogger("arviz")`` is another
    object: both are silenced."""
    loggers = {logging.getLogger("arviz"), getattr(az, "_log", logging.getLogger("arviz"))}
    levels = {logger: logger.level for logger in loggers}
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)


def _unique_dims(values: Mapping[str, np.ndarray], dims: Mapping[str, list[str]], offset: int) -> dict[str, list[str]]:
    """``dims`` with any name that two variables use at different lengths made variable-specific."""
    seen: dict[str, int] = {}
    out = {}
    for k, names in dims.items():
        shape = np.shape(values[k])[offset:]
        fixed = []
        for i, (name, n) in enumerate(zip(names, shape)):
            if seen.setdefault(name, n) != n or name in fixed:
                name = f"{k}_dim_{i}"
            fixed.append(name)
        out[k] = fixed
    return out


def to_idata(groups: Mapping[str, Mapping[str, np.ndarray]], dims: Mapping[str, Mapping[str, list[str]]],
             extra: Mapping[str, Mapping[str, tuple[np.ndarray, list[str]]]] | None = None,
             attrs: Mapping[str, Any] | None = None) -> az.InferenceData:
    """InferenceData from arrays: ``groups`` maps a group name to its variables (chain, draw,
    ...) (observed and constant data without chain and draw), ``dims`` names the dimensions
    after chain and draw, ``extra`` adds variables with dimensions of their own (an
    optimisation trace along ``step``) to a group."""
    datasets = {}
    with quiet():
        for group, values in groups.items():
            values = {k: np.asarray(v) for k, v in values.items()}
            if not values and not (extra or {}).get(group):
                continue
            offset = 0 if group in NO_CHAIN_GROUPS else 2
            named = _unique_dims(values, dims.get(group, {}), offset)
            ds = az.dict_to_dataset(values, dims=named, default_dims=[] if offset == 0 else None,
                                    attrs=dict(attrs or {})) if values else xr.Dataset(attrs=dict(attrs or {}))
            for k, (v, d) in (extra or {}).get(group, {}).items():  # steps counted from 1
                v = np.asarray(v)
                ds[k] = xr.DataArray(v, dims=d, coords={name: np.arange(1, n + 1) for name, n in zip(d, v.shape)})
            datasets[group] = ds
        idata = az.InferenceData(**datasets)
    idata.attrs.update(dict(attrs or {}))
    return idata


def scalar_stats(idata: az.InferenceData, var_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per latent scalar of ``var_names`` (default all): mean, sd, bulk and tail ESS, r_hat
    (NaN for a single chain). Empty without a posterior group (a density model)."""
    if idata.get("posterior") is None or (var_names is not None and not var_names):
        return pd.DataFrame(columns=["var", "index", "name", "mean", "sd", "ess_bulk", "ess_tail", "r_hat"])
    post = idata.posterior if var_names is None else idata.posterior[list(var_names)]
    with quiet():
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
    with quiet():
        return az.summary(idata, **kwargs)


def pareto_k(log_weights: np.ndarray) -> float:
    """Pareto k of the importance weights' tail (PSIS, Vehtari et al.); -inf when every weight
    is the same (the proposal is the target: the weights have no tail)."""
    log_weights = np.asarray(log_weights, dtype=float)
    finite = log_weights[np.isfinite(log_weights)]  # a weight of zero (log weight -inf) is no part of the tail
    if np.ptp(finite) <= 1e-9 * max(1.0, float(np.max(np.abs(finite)))):
        return -math.inf
    with quiet():
        _, k = az.psislw(finite.copy())
    return float(k)


def save(idata: az.InferenceData, path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Save to netCDF atomically; ``meta`` (JSON-serialisable) goes into the file's attributes."""
    path = Path(path)
    idata = idata.copy()
    idata.attrs["zoo"] = json.dumps(meta, default=jsonable)
    atomic_write(path, lambda tmp: idata.to_netcdf(tmp))
    return path


def load(path: str | Path) -> tuple[az.InferenceData, dict[str, Any]]:
    """Load InferenceData saved by `save` and its metadata (no pickle involved)."""
    with quiet():
        idata = az.from_netcdf(str(path))
        idata.load()
    post = idata.get("posterior")
    meta = idata.attrs.get("zoo") or (post.attrs.get("zoo") if post is not None else None) or "{}"
    return idata, json.loads(meta)


def single_log_likelihood(idata: az.InferenceData) -> az.InferenceData:
    """The posterior and one log-likelihood variable holding every observation of every
    observed site (flattened): what ``az.loo`` and ``az.compare`` need when a model observes
    several sites (each observation then counts as one unit left out)."""
    ll = idata.log_likelihood
    arrays = [ll[v].values.reshape(ll[v].shape[:2] + (-1,)) for v in ll.data_vars]
    arr = np.concatenate(arrays, axis=2)
    ds = xr.Dataset({"observations": (("chain", "draw", "observation"), arr)},
                    coords={"chain": ll.chain.values, "draw": ll.draw.values})
    return az.InferenceData(posterior=idata.posterior, log_likelihood=ds)


def loo(idata: az.InferenceData) -> dict[str, float]:
    """PSIS-LOO over every observation: ``elpd_loo``, its standard error ``elpd_loo_se``, the
    effective number of parameters ``p_loo``, the share of observations whose Pareto k exceeds
    0.7 (``loo_k_bad``: their LOO estimate is unreliable) and the largest k (``loo_k_max``)."""
    with quiet():
        res = az.loo(single_log_likelihood(idata), pointwise=True)
    k = np.asarray(res.pareto_k).ravel()
    return {"elpd_loo": float(res.elpd_loo), "elpd_loo_se": float(res.se), "p_loo": float(res.p_loo),
            "loo_k_bad": float(np.mean(k > 0.7)), "loo_k_max": float(np.max(k))}


def bfmi(idata: az.InferenceData) -> np.ndarray:
    """Bayesian fraction of missing information of each chain, from ``sample_stats.energy``."""
    with quiet():
        return np.asarray(az.bfmi(idata), dtype=float)


def compare(idatas: Mapping[str, az.InferenceData]) -> pd.DataFrame:
    """``az.compare`` by PSIS-LOO with stacking weights, one row per entry, best first."""
    with quiet():
        return az.compare({k: single_log_likelihood(v) for k, v in idatas.items()}, ic="loo", method="stacking")


# ----------------------------------------------------------------------------------- plots


def scalar_label(var: str, index: tuple[int, ...]) -> str:
    return var + (f"[{','.join(map(str, index))}]" if index else "")


def pick_scalars(posterior: xr.Dataset, var_names: Sequence[str], limit: int) -> list[tuple[str, tuple[int, ...]]]:
    """Up to ``limit`` scalars of ``var_names``: the first of every site, then the second, ...
    (the first index running fastest: ``locs[0,0]``, ``locs[1,0]``, ..., one per component);
    returned grouped by site."""
    per_var = [[tuple(reversed(i)) for i in np.ndindex(tuple(reversed(posterior[v].shape[2:])))] for v in var_names]
    per_var = [[(v, idx) for idx in indices] for v, indices in zip(var_names, per_var)]
    picked: list[tuple[str, tuple[int, ...]]] = []
    for i in range(max((len(p) for p in per_var), default=0)):
        picked += [p[i] for p in per_var if i < len(p)]
    picked = picked[:limit]
    return sorted(picked, key=lambda vi: (list(var_names).index(vi[0]), vi[1][::-1]))


def _shown(posterior: xr.Dataset, var_names: Sequence[str], picks: Sequence[Any]) -> str:
    """`` (6 of 10 scalars shown)`` when the picks leave some out, else nothing."""
    total = sum(int(np.prod(posterior[v].shape[2:], dtype=int)) for v in var_names)
    return f" ({len(picks)} of {total} scalars shown)" if len(picks) < total else ""


def _scalar_idata(idata: az.InferenceData, picks: Sequence[tuple[str, tuple[int, ...]]]) -> az.InferenceData:
    """An InferenceData whose posterior holds one variable per picked scalar (named
    ``locs[0,1]``), with the per-draw sample statistics (divergences for the pair plot)."""
    post = idata.posterior
    coords = {"chain": post.chain.values, "draw": post.draw.values}
    ds = xr.Dataset({scalar_label(v, idx): (("chain", "draw"), post[v].values[(slice(None), slice(None)) + idx])
                     for v, idx in picks}, coords=coords)
    groups = {"posterior": ds}
    stats = idata.get("sample_stats")
    if stats is not None:
        keep = [k for k in stats.data_vars if stats[k].dims == ("chain", "draw")]
        if keep:
            groups["sample_stats"] = stats[keep]
    return az.InferenceData(**groups)


def _figure(axes: Any) -> Any:
    return np.atleast_1d(axes).ravel()[0].get_figure()


def _finish(fig: Any, title: str, legends_outside: bool = True) -> Any:
    """Title the figure, give every panel the same modest text sizes (ArviZ scales its own
    with the figure) and move each panel's legend beside it, where it covers nothing."""
    for ax in fig.axes:
        ax.tick_params(labelsize=9)
        ax.xaxis.label.set_size(10)
        ax.yaxis.label.set_size(10)
        ax.title.set_size(10)
        legend = ax.get_legend()
        if legend is not None and legends_outside:
            handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
            title_text = legend.get_title().get_text()
            legend.remove()
            if handles:
                ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                          title=title_text or None, title_fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.set_layout_engine("constrained")  # laid out when drawn or saved, not before
    return fig


def has_divergences(idata: az.InferenceData) -> bool:
    stats = idata.get("sample_stats")
    return stats is not None and "diverging" in stats and bool(stats["diverging"].values.any())


def plot_trace(idata: az.InferenceData, var_names: Sequence[str], title: str) -> Any:
    """``az.plot_trace`` of up to `MAX_SCALARS` scalars: density per chain (left), draws in
    order (right); divergent transitions marked under the trace."""
    picks = pick_scalars(idata.posterior, var_names, MAX_SCALARS)
    title += _shown(idata.posterior, var_names, picks)
    chains = idata.posterior.sizes["chain"]
    with quiet():
        axes = az.plot_trace(_scalar_idata(idata, picks), compact=False, legend=chains > 1,
                             figsize=(FIGURE_WIDTH, 1.6 * len(picks) + 0.8))
    for row in np.atleast_2d(axes):
        row[1].set_xlabel("draw")
        row[0].set_xlabel("value")
        for line in row[0].lines + row[1].lines:  # ArviZ's divergence ticks (30 pt) hide the draws
            if line.get_marker() == "|":
                line.set_markersize(7)
                line.set_color("C3")
    if has_divergences(idata):
        title += f": {int(idata.sample_stats['diverging'].values.sum())} divergent transitions (red ticks)"
    return _finish(_figure(axes), title)


def plot_rank(idata: az.InferenceData, var_names: Sequence[str], title: str) -> Any:
    """``az.plot_rank``: histograms of each chain's ranks among all draws (uniform when the
    chains mix), up to `MAX_SCALARS` scalars."""
    picks = pick_scalars(idata.posterior, var_names, MAX_SCALARS)
    title += _shown(idata.posterior, var_names, picks)
    cols = min(3, len(picks))
    rows = -(-len(picks) // cols)
    with quiet():
        axes = az.plot_rank(_scalar_idata(idata, picks), grid=(rows, cols),
                            figsize=(FIGURE_WIDTH, 2.6 * rows + 0.8))
    for ax in np.atleast_1d(axes).ravel():
        if ax.has_data():
            ax.set_xlabel("rank (all chains)")
            ax.set_ylabel("chain")
    return _finish(_figure(axes), title)


def plot_pair(idata: az.InferenceData, var_names: Sequence[str], title: str) -> Any:
    """``az.plot_pair`` of up to `PAIR_SCALARS` scalars with marginals; divergent transitions
    drawn over the draws in red (and counted in the title)."""
    import matplotlib.lines as mlines

    picks = pick_scalars(idata.posterior, var_names, PAIR_SCALARS)
    title += _shown(idata.posterior, var_names, picks)
    divergent = has_divergences(idata)
    size = min(2.4 * len(picks) + 1.5, FIGURE_WIDTH)
    with quiet():
        axes = az.plot_pair(_scalar_idata(idata, picks), marginals=True, divergences=divergent, textsize=10,
                            figsize=(size, size), scatter_kwargs={"alpha": 0.3, "s": 8},
                            divergences_kwargs={"color": "C3", "markersize": 5})
    fig = _figure(axes)
    if divergent:
        n = int(idata.sample_stats["diverging"].values.sum())
        title += f": {n} divergent transitions (red)"
        handles = [mlines.Line2D([], [], color="C0", marker="o", ls="", alpha=0.5, label="draw"),
                   mlines.Line2D([], [], color="C3", marker="o", ls="", label="divergent transition")]
        fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False, bbox_to_anchor=(1.0, 0.95))
    elif "diverging" in idata.get("sample_stats", {}):
        title += ": no divergent transitions"
    return _finish(fig, title)


def plot_energy(idata: az.InferenceData, title: str) -> Any:
    """``az.plot_energy``: the marginal energy distribution against the energy transitions,
    with each chain's BFMI in the legend (below 0.3: the sampler explores the tails poorly)."""
    with quiet():
        ax = az.plot_energy(idata, figsize=(7.0, 4.5))
    ax.set_xlabel("energy (centred)")
    ax.set_ylabel("density")
    return _finish(_figure(ax), title)


def _aligned(idata: az.InferenceData, group: str) -> az.InferenceData:
    """Observed data restricted to the observations present in ``group`` (a model storing a
    few rows of its per-observation groups), so the two line up; counts and labels held as
    floats become integers in both, so ArviZ draws them as discrete."""
    obs, other = idata.observed_data, idata[group]
    picked, replicated = {}, {}
    for v in obs.data_vars:
        if v in other:
            sel = {d: other[d].values for d in obs[v].dims if d in other[v].dims and other.sizes[d] < obs.sizes[d]}
            picked[v], replicated[v] = obs[v].sel(sel), other[v]
            if all(np.array_equal(a.values, np.round(a.values)) for a in (picked[v], replicated[v])):
                picked[v], replicated[v] = picked[v].astype(np.int64), replicated[v].astype(np.int64)
    out = {g: idata[g] for g in idata.groups() if g not in ("observed_data", group)}
    return az.InferenceData(**out, observed_data=xr.Dataset(picked),
                            **{group: other.assign(replicated)})


def plot_ppc(idata: az.InferenceData, var_names: Sequence[str], title: str, group: str = "posterior") -> Any:
    """``az.plot_ppc``: the observed data against 100 data sets replicated from the posterior
    (``group="prior"``: from the prior), one panel per observed site."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(var_names), squeeze=False, figsize=(min(FIGURE_WIDTH, 5.0 * len(var_names) + 1), 4.0))
    pred = idata[f"{group}_predictive"]
    num = min(100, pred.sizes["chain"] * pred.sizes["draw"])
    data = _aligned(idata, f"{group}_predictive")
    with quiet():
        for var, ax in zip(var_names, axes[0]):
            az.plot_ppc(data, var_names=[var], group=group, num_pp_samples=num, random_seed=0, ax=ax)
            ax.set_xlabel(var)
            ax.set_ylabel("density")
            ax.set_title(f"{var}: observed vs replicated")
    return _finish(fig, title)


def plot_loo_pit(idata: az.InferenceData, var_names: Sequence[str], title: str) -> Any:
    """``az.plot_loo_pit``: the ECDF of the leave-one-out probability integral transforms
    minus the uniform's, with its 94% band (inside the band: the predictive is calibrated)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(var_names), squeeze=False, figsize=(min(FIGURE_WIDTH, 5.0 * len(var_names) + 1), 4.0))
    data = _aligned(idata, "posterior_predictive")
    with quiet():
        for var, ax in zip(var_names, axes[0]):
            if data.posterior_predictive[var].ndim == data.log_likelihood[var].ndim:
                az.plot_loo_pit(data, y=var, ecdf=True, ax=ax)
            else:  # an observation is a vector: one PIT per coordinate, under its row's LOO weights
                az.plot_loo_pit(ecdf=True, ax=ax, **coordinate_pit(data, var))
            ax.set_xlabel(f"LOO-PIT of {var}")
            ax.set_ylabel("ECDF - uniform CDF")
            ax.set_title(f"{var}: LOO-PIT")
    return _finish(fig, title)


def coordinate_pit(idata: az.InferenceData, var: str) -> dict[str, np.ndarray]:
    """``y``, ``y_hat`` and ``log_weights`` for ``az.plot_loo_pit`` when each observation is a
    vector: every coordinate is a scalar observation whose PIT takes the PSIS-LOO weights of
    its row (the pointwise log-likelihood is per row)."""
    ll = idata.log_likelihood[var].values
    chains, draws = ll.shape[:2]
    rows = int(np.prod(ll.shape[2:], dtype=int))
    if chains == 1:
        reff = 1.0
    else:
        ess_p = az.ess(idata.posterior, method="mean")
        reff = float(np.hstack([ess_p[v].values.ravel() for v in ess_p.data_vars]).mean()) / (chains * draws)
    log_w, _ = az.psislw(-ll.reshape(chains * draws, rows).T.copy(), reff)  # (rows, S)
    y = idata.observed_data[var].values.reshape(rows, -1)
    y_hat = idata.posterior_predictive[var].values.reshape(chains * draws, rows, -1)
    width = y.shape[1]
    return {"y": y.ravel(), "y_hat": np.moveaxis(y_hat, 0, -1).reshape(rows * width, -1),
            "log_weights": np.repeat(log_w, width, axis=0)}


def plot_elbo(curves: Mapping[str, np.ndarray], title: str, log_evidence: float | None = None,
              ylabel: str = "ELBO") -> Any:
    """One panel per back-end, `ELBO_PANELS` to a row: its optimisation trace (ELBO per step)
    and a 50-step running mean, against the exact log evidence (the ELBO's ceiling) where
    known, with one legend under the panels. The y axis shows the last 80% of steps, where the
    noise and the gap are visible."""
    import matplotlib.pyplot as plt

    names = list(curves)
    rows, columns = -(-len(names) // ELBO_PANELS), min(len(names), ELBO_PANELS)
    fig, axes = plt.subplots(rows, columns, squeeze=False,
                             figsize=(min(FIGURE_WIDTH, 4.5 * columns + 1), 3.2 * rows + 0.8))
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    for name, ax in zip(names, axes.ravel()):
        y = np.asarray(curves[name], dtype=float)
        steps = np.arange(1, len(y) + 1)
        ax.plot(steps, y, lw=0.6, color="C0", alpha=0.6, label=ylabel)
        if len(y) >= 100:
            ax.plot(steps, pd.Series(y).rolling(50, min_periods=1).mean(), color="C1", lw=1.5, label="running mean (50)")
        if len(y) < 50:  # a few sweeps (coordinate ascent): every one visible
            ax.lines[-1].set_marker("o")
        tail = y[len(y) // 5:] if len(y) >= 50 else y
        lo, hi = float(np.min(tail)), float(np.max(tail))
        if log_evidence is not None:
            ax.axhline(log_evidence, color="k", ls="--", lw=1, label="exact log evidence")
            hi = max(hi, log_evidence)
        pad = 0.05 * (hi - lo) or 1.0
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
    labels: dict[str, Any] = {}  # one legend entry per label, from the first panel that has it
    for line in (line for ax in axes.ravel()[:len(names)] for line in ax.lines):
        labels.setdefault(line.get_label(), line)
    return _legend_below(fig, list(labels.values()), list(labels), title)


def _legend_below(fig: Any, handles: Sequence[Any], labels: Sequence[str], title: str) -> Any:
    """Title the figure and put one legend for every panel under them."""
    _finish(fig, title, legends_outside=False)
    fig.legend(list(handles), list(labels), loc="outside lower center", ncol=min(4, len(labels)), fontsize=9,
               frameon=False)
    return fig


def plot_forest(idatas: Mapping[str, az.InferenceData], var_names: Sequence[str], title: str) -> Any:
    """``az.plot_forest``: 94% intervals (thin) and interquartile ranges (thick) around the
    median of up to `MAX_SCALARS` scalars per site, one panel per site (each its own scale)
    stacked down the page, every back-end a colour."""
    import matplotlib.lines as mlines
    import matplotlib.pyplot as plt

    names = list(idatas)
    first = idatas[names[0]].posterior
    picks = {v: pick_scalars(first, [v], MAX_SCALARS) for v in var_names}
    small = [_scalar_idata(idatas[n], [vi for v in var_names for vi in picks[v]]) for n in names]
    rows = [len(picks[v]) * len(names) for v in var_names]
    fig, axes = plt.subplots(len(var_names), 1, squeeze=False, height_ratios=[r + 1.5 for r in rows],
                             figsize=(FIGURE_WIDTH * 0.8, min(14.0, 1.2 + 0.3 * sum(r + 1.5 for r in rows))))
    with quiet():
        for var, ax in zip(var_names, axes[:, 0]):
            az.plot_forest(small, model_names=names, var_names=[scalar_label(*vi) for vi in picks[var]],
                           combined=True, hdi_prob=0.94, ax=ax, legend=False, textsize=9)
            ax.set_title(var + _shown(first, [var], picks[var]))
    axes[-1, 0].set_xlabel("value")
    handles = [mlines.Line2D([], [], color=f"C{i % 10}", lw=2) for i in range(len(names))]
    return _legend_below(fig, handles, names, title)


def plot_density(idatas: Mapping[str, az.InferenceData], var_names: Sequence[str], title: str,
                 marginal: Callable[[str, tuple[int, ...]], Any] | None = None,
                 points: Sequence[str] = ()) -> Any:
    """Marginal posterior densities of up to `MAX_SCALARS` scalars, every back-end a colour;
    the exact marginal's closed-form density in black where ``marginal(site, index)`` gives a
    frozen scipy distribution (the ``exact`` back-end's draws are then not drawn again), and
    the back-ends in ``points`` (point estimates) as vertical lines."""
    import matplotlib.pyplot as plt

    names = list(idatas)
    picks = pick_scalars(idatas[names[0]].posterior, var_names, MAX_SCALARS)
    title += _shown(idatas[names[0]].posterior, var_names, picks)
    cols = min(3, len(picks))
    rows = -(-len(picks) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(FIGURE_WIDTH, 2.6 * rows + 1.2))
    handles: dict[str, Any] = {}
    for ax, (var, idx) in zip(axes.ravel(), picks):
        exact = marginal(var, idx) if marginal is not None else None
        values = {n: idatas[n].posterior[var].values[(slice(None), slice(None)) + idx].ravel() for n in names}
        drawn = [v for n, v in values.items() if n not in points]
        lo, hi = (np.quantile(np.concatenate(drawn), [0.001, 0.999]) if drawn
                  else (min(v.min() for v in values.values()), max(v.max() for v in values.values())))
        for i, n in enumerate(names):
            colour = f"C{i % 10}"
            if n in points:
                handles[f"{n} (point estimate)"] = ax.axvline(values[n][0], color=colour, ls="--")
            elif not (n == "exact" and exact is not None):
                with quiet():
                    az.plot_kde(values[n], ax=ax, plot_kwargs={"color": colour, "linewidth": 1.3}, textsize=9)
                handles[n] = ax.get_lines()[-1]
        if exact is not None:
            pad = 0.1 * (hi - lo)
            grid = np.linspace(lo - pad, hi + pad, 400)
            handles["exact (closed-form density)"] = ax.plot(grid, exact.pdf(grid), color="k", lw=1.2)[0]
        ax.set_title(scalar_label(var, idx))
        ax.set_xlabel("value")
        ax.set_yticks([])
    for ax in axes.ravel()[len(picks):]:
        ax.set_visible(False)
    return _legend_below(fig, list(handles.values()), list(handles), title)


def plot_compare(table: pd.DataFrame, title: str) -> Any:
    """``az.plot_compare``: each model's elpd_loo with its standard error (circles), and its
    difference to the best model with the standard error of the difference (triangles)."""
    with quiet():
        ax = az.plot_compare(table, figsize=(FIGURE_WIDTH * 0.75, 1.2 + 0.6 * len(table)), insample_dev=False,
                             plot_ic_diff=True, legend=True)
    ax.set_title("")
    ax.set_xlabel("elpd_loo (log predictive density, higher is better)")
    ax.set_ylabel("")
    return _finish(_figure(ax), title)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG file atomically."""
    return _savefig(fig, Path(path))


def _savefig(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))


def rhat_of(values: np.ndarray) -> np.ndarray:
    """Split r_hat (rank-normalised, ArviZ's default) of every entry of an array shaped
    ``(chain, draw, ...)``; an array of the trailing shape, NaN everywhere for one chain."""
    values = np.asarray(values, dtype=float)
    if values.shape[0] < 2:
        return np.full(values.shape[2:], np.nan)
    with quiet():
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
    with quiet():
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

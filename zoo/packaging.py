"""A back-end's draws packed into InferenceData: every group ArviZ's workflow reads, with named
dimensions.

Groups (`package`):

- ``posterior``: the latent sites' draws and the deterministic sites (``pyro.deterministic``),
  recomputed at every draw by replaying the model on it (``pyro.infer.Predictive``).
- ``sample_stats``: the back-end's per-draw statistics (``diverging``, ``energy``, ...), ``lp``
  = log p(data, latents) at every draw (discrete latents summed out), and the optimisation
  traces (``elbo_trace``, ``loglik_trace``) as arrays along a ``step`` dimension.
- ``log_likelihood``: the log-likelihood of each observation at each draw (discrete latents
  summed out, as in a mixture density). Left out for a point estimate.
- ``posterior_predictive``: data replicated from the model at every draw
  (``Predictive(model, posterior_samples=draws, parallel=True)`` with the observed data sites
  released, `Released`); discrete latents (mixture assignments) are drawn afresh, as the
  log-likelihood sums them out, so that LOO-PIT compares like with like.
- ``prior``, ``prior_predictive``: latents and data drawn from the model alone. Left out, with
  a note, for a model with an improper (flat) prior or one that cannot simulate its data.
- ``observed_data`` and ``constant_data`` (the covariates).

Dimensions are named (`Layout`): a data key's by its `DataKey.dims`, a latent or deterministic
site's by `ModelSpec.dims`, the rest after the plate they sit in (so a local latent in the same
plate as the data shares the data's dimension), else ``<site>_dim_<i>``. A model that keeps
only ``local_rows`` rows of its local latents keeps the same rows of every per-observation
group (log-likelihood, predictive draws), so each stored log-likelihood belongs to stored draws.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive
from pyro.poutine.uncondition_messenger import UnconditionMessenger
from pyro.poutine.util import site_is_subsample

from zoo.core import arviz_io
from zoo.core.problem import Problem, trace_model
from zoo.core.spec import Fit
from zoo.inference.common import log_densities, padded, seed_all

PRIOR_DRAWS = 500  # prior and prior-predictive draws (fewer when the posterior has fewer)
CHUNK_VALUES = 2_000_000  # most replicated values held at once while replaying the model


@dataclass(frozen=True)
class Layout:
    """What each sample site of a model is, its shape and the names of its dimensions.

    Attributes
    ----------
    observed : observed sites that are data (not ``pyro.deterministic``, not ``pyro.factor``).
    deterministic : ``pyro.deterministic`` sites.
    dims : every site and data key to the names of its value's dimensions.
    shapes : every site to its value's shape (one draw).
    batch_ndim : observed site to the number of its dimensions that index observations (the
        dimensions of its pointwise log-likelihood).
    improper : latent sites whose prior cannot be sampled (``ImproperUniform``) or is flat
        (``.mask(False)``).
    values : observed site to its observed value.
    data_keys : the data keys that are observations (the others are covariates or sizes).
    """

    observed: tuple[str, ...]
    deterministic: tuple[str, ...]
    dims: dict[str, list[str]]
    shapes: dict[str, tuple[int, ...]]
    batch_ndim: dict[str, int]
    improper: tuple[str, ...]
    values: dict[str, np.ndarray]
    data_keys: tuple[str, ...]


class Released(UnconditionMessenger):
    """Pyro's ``poutine.uncondition`` for the given sites only: they are drawn from the model
    instead of held at the data. (Released whole, a ``pyro.deterministic`` site would be drawn
    from its Delta again, and inside a plate that broadcasts it to the wrong shape.)"""

    def __init__(self, sites: tuple[str, ...]) -> None:
        super().__init__()
        self.sites = frozenset(sites)

    def _pyro_sample(self, msg: Any) -> None:
        if msg["name"] in self.sites:
            super()._pyro_sample(msg)


def layout(problem: Problem) -> Layout:
    """Trace the model once on its data and name every site's dimensions (module docstring)."""
    spec = problem.spec
    tr = trace_model(spec, problem.data, problem.hyper)  # as validation traced it
    sites = {k: s for k, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}
    deterministic, observed = problem.deterministic, problem.observed  # site kinds as validation found them
    declared = {k: tuple(v.dims) for k, v in spec.data.items() if spec.source != "user"}
    declared.update(spec.dims)

    def plate_axes(site: dict) -> dict[int, str]:
        value_ndim = site["value"].dim()
        batch = len(site["fn"].batch_shape)
        event = value_ndim - batch
        return {value_ndim - event + f.dim: f.name for f in site["cond_indep_stack"]
                if f.vectorized and f.dim is not None and value_ndim - event + f.dim >= 0}

    alias = {}  # a plate's name -> the data dimension it runs over
    for k in observed:
        if k in declared:
            for axis, plate in plate_axes(sites[k]).items():
                if axis < len(declared[k]):
                    alias.setdefault(plate, declared[k][axis])
    taken = set(sites) | set(spec.data)
    dims, shapes, batch_ndim = {}, {}, {}
    for k, s in sites.items():
        shapes[k] = tuple(s["value"].shape)
        plates = plate_axes(s)
        names = []
        for i in range(len(shapes[k])):
            if i < len(declared.get(k, ())):
                name = declared[k][i]
            elif i in plates:
                name = alias.get(plates[i], plates[i])
            else:
                name = f"{k}_dim_{i}"
            names.append(name + "_" if name in taken else name)
        dims[k] = names
        if k in observed:
            batch_ndim[k] = len(s["fn"].batch_shape)
    for k, arr in problem.np_data.items():  # covariates, and data keys no site reads whole
        if k not in dims:
            dims[k] = [declared[k][i] if i < len(declared.get(k, ())) else f"{k}_dim_{i}" for i in range(np.ndim(arr))]
    values = {k: problem.np_data[k] if k in problem.np_data else sites[k]["value"].detach().numpy() for k in observed}
    data_keys = tuple(k for k, v in problem.data.items()  # data keys observed (under a site name of their own)
                      if k in observed or any(sites[o]["value"] is v for o in observed))
    return Layout(observed, deterministic, dims, shapes, batch_ndim, problem.improper, values, data_keys)


def _samples(problem: Problem, draws: Mapping[str, np.ndarray], parallel: bool) -> dict[str, torch.Tensor]:
    """Draws (S, *shape) as tensors Predictive conditions on: padded to broadcast against its
    outer plate when ``parallel`` (its own padding misreads a site with an event shape)."""
    out = {}
    for k, v in draws.items():
        t = torch.as_tensor(np.asarray(v), dtype=problem.sites[k].dtype)
        out[k] = padded(problem, k, t) if parallel else t
    return out


def replay(problem: Problem, model: Callable[..., Any], draws: Mapping[str, np.ndarray], sites: tuple[str, ...],
           shapes: Mapping[str, tuple[int, ...]], seed: int, num: int | None = None) -> dict[str, np.ndarray]:
    """Values of ``sites`` when ``model`` runs conditioned on each draw (``draws``: site to
    (S, ...) arrays; none with ``num`` draws from the model alone), by ``pyro.infer.Predictive``.

    Vectorised (``parallel=True``) over chunks of draws; a model that does not broadcast
    against an outer plate is run one draw at a time instead. Returns site to (S, *shape).
    """
    num = len(next(iter(draws.values()))) if draws else int(num or 0)
    per_draw = max(1, sum(int(np.prod(shapes[s], dtype=int)) for s in sites))
    chunk = max(1, min(num, CHUNK_VALUES // per_draw))

    def run(parallel: bool) -> dict[str, np.ndarray]:
        seed_all(seed)
        parts: dict[str, list[np.ndarray]] = {s: [] for s in sites}
        for start in range(0, num, chunk):
            n = min(chunk, num - start)
            given = _samples(problem, {k: v[start:start + n] for k, v in draws.items()}, parallel)
            predictive = Predictive(model, posterior_samples=given or None, num_samples=None if given else n,
                                    return_sites=list(sites), parallel=parallel)
            with torch.no_grad(), pyro.validation_enabled(False):
                got = predictive()
            for s in sites:
                value = got[s].detach()
                if not parallel and value.numel() != n * int(np.prod(shapes[s], dtype=int)):
                    # a (3,) observation under a batch-shape () distribution: Pyro scores it, but
                    # the model's own draw of the site has another shape
                    raise NotImplementedError(f"its draws of {s!r} have shape {tuple(value.shape[1:])}, "
                                              f"the data {shapes[s]}")
                parts[s].append(value.reshape((n,) + shapes[s]).numpy())
        return {s: np.concatenate(v) for s, v in parts.items()}

    if not sites or num == 0:
        return {}
    try:
        return run(parallel=True)
    except (RuntimeError, ValueError, IndexError):  # a model that does not broadcast: one draw at a time
        return run(parallel=False)


def _rows(values: Mapping[str, np.ndarray], sites: set[str], rows: int | None) -> dict[str, np.ndarray]:
    """Keep the first ``rows`` entries of the first axis after (chain, draw) of ``sites``."""
    if rows is None:
        return dict(values)
    return {k: v[:, :, :rows] if k in sites and v.ndim > 2 else v for k, v in values.items()}


def _chains(values: Mapping[str, np.ndarray], chains: int) -> dict[str, np.ndarray]:
    return {k: v.reshape((chains, -1) + v.shape[1:]) for k, v in values.items()}


def _flat(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in values.items()}


def traces(diagnostics: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The optimisation traces among a fit's diagnostics (``elbo_trace``, ``loglik_trace``, ...):
    every ``*_trace`` entry that is a sequence of numbers."""
    out = {}
    for k, v in diagnostics.items():
        if k.endswith("_trace") and isinstance(v, (list, tuple, np.ndarray)) and len(v) > 0:
            arr = np.asarray(v)
            if arr.ndim == 1 and np.issubdtype(arr.dtype, np.number):
                out[k] = arr.astype(float)
    return out


def package(problem: Problem, fit: Fit, posterior: dict[str, np.ndarray], label: str, seed: int) -> Any:
    """InferenceData of a fit (module docstring); each group left out says why in its
    attributes (``no_prior``, ``no_log_likelihood``, ...).

    Parameters
    ----------
    fit : what the back-end returned (its kind, sample_stats and diagnostics).
    posterior : its draws (chain, draw, ...) after relabelling.
    label : the back-end label, stored in the attributes.
    seed : seeds the predictive draws.
    """
    spec = problem.spec
    lay = layout(problem)
    groups: dict[str, dict[str, np.ndarray]] = {
        "observed_data": {k: lay.values[k] for k in lay.observed},
        "constant_data": {k: v for k, v in problem.np_data.items() if k not in lay.data_keys},
    }
    missing: dict[str, str] = {}
    chains = 1 if fit.kind != "mcmc" or not posterior else next(iter(posterior.values())).shape[0]
    stats = _chains(_flat(fit.sample_stats), chains)
    if posterior:
        flat = _flat(posterior)
        continuous = {k: v for k, v in flat.items() if not problem.sites[k].discrete} or flat
        log_joint, log_lik = log_densities(problem, continuous)
        stats.setdefault("lp", log_joint.reshape(chains, -1))
        determ = replay(problem, problem.model, flat, lay.deterministic, lay.shapes, seed)
        # replicated data draw the discrete latents afresh, as the log-likelihood sums them out:
        # a point's assignment, inferred from the point itself, would make its predictive too sharp
        replicated = _replay_or_note(problem, Released(lay.observed)(problem.model), continuous, lay, seed,
                                     "posterior_predictive", missing)
        local = {k for k in posterior if k not in spec.latent_sites} | set(lay.observed) | set(lay.deterministic)
        rows = spec.scoring.local_rows
        groups["posterior"] = _rows(_chains({**flat, **determ}, chains), local, rows)
        if fit.kind == "point":
            missing["log_likelihood"] = "a point estimate: no posterior draws to average a likelihood over"
        else:
            groups["log_likelihood"] = _rows(_chains({k: log_lik[k] for k in lay.observed}, chains), local, rows)
        if replicated:
            groups["posterior_predictive"] = _rows(_chains(replicated, chains), local, rows)
        prior = _prior(problem, lay, min(PRIOR_DRAWS, len(log_joint)), seed, missing)
        if prior:
            groups["prior"] = _rows(_chains({k: v for k, v in prior.items() if k not in lay.observed}, 1), local, rows)
            groups["prior_predictive"] = _rows(_chains({k: prior[k] for k in lay.observed}, 1), local, rows)
    else:
        missing["posterior"] = "the model has no latent sites (a density model)"
    groups["sample_stats"] = stats  # left out when empty, unless it gets an optimisation trace
    dims = {group: {k: _dims(lay, k, np.shape(v), group) for k, v in values.items()}
            for group, values in groups.items()}
    steps = traces(fit.diagnostics)
    one_length = len({len(t) for t in steps.values()}) == 1
    extra = {"sample_stats": {k: (v, ["step" if one_length else f"{k}_step"]) for k, v in steps.items()}}
    idata = arviz_io.to_idata(groups, dims, extra, attrs={
        "model": problem.name, "backend": label, "seed": seed, "draws": fit.kind,
        **{f"no_{g}": why for g, why in missing.items()}})
    return idata


def _dims(lay: Layout, name: str, shape: tuple[int, ...], group: str) -> list[str]:
    """Dimension names of ``name`` in ``group`` (after chain and draw where the group has them)."""
    names = lay.dims.get(name, [])
    if group in ("observed_data", "constant_data"):
        ndim = len(shape)
    else:
        ndim = len(shape) - 2
    if group == "log_likelihood":
        names = names[:lay.batch_ndim.get(name, ndim)]
    names = list(names[:ndim])
    return names + [f"{name}_dim_{i}" for i in range(len(names), ndim)]


def _replay_or_note(problem: Problem, model: Callable[..., Any], draws: Mapping[str, np.ndarray], lay: Layout,
                    seed: int, group: str, missing: dict[str, str], num: int | None = None,
                    sites: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """`replay`, or an empty dict and a note in ``missing`` where the model cannot simulate
    (a distribution without ``sample``)."""
    sites = lay.observed if sites is None else sites
    try:
        return replay(problem, model, draws, sites, lay.shapes, seed, num)
    except NotImplementedError as e:
        missing[group] = f"the model cannot simulate its sites {', '.join(sites)}: {e or 'no sampler'}"
        return {}


def _prior(problem: Problem, lay: Layout, num: int, seed: int, missing: dict[str, str]) -> dict[str, np.ndarray]:
    """``num`` joint draws of latents, deterministic sites and data from the model alone."""
    if lay.improper:
        why = f"the prior of {', '.join(lay.improper)} is improper (flat): it cannot be drawn from"
        missing["prior"] = missing["prior_predictive"] = why
        return {}
    sites = tuple(problem.sites) + lay.deterministic + lay.observed
    drawn = _replay_or_note(problem, Released(lay.observed)(problem.model), {}, lay, seed + 1, "prior", missing,
                            num=num, sites=sites)
    if not drawn:
        missing["prior_predictive"] = missing["prior"]
    return drawn

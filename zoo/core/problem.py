"""Validation of a user's data, hyperparameters and options, and the `Problem` a back-end gets.

Everything a user can get wrong is checked here, before any back-end runs, and reported as a
`ZooError` naming the model, the key or site, and the bad value. Pyro's MCMC switches argument
validation off, so the model is traced once here with validation on and every observed value
is checked against its site's support.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

from zoo.core.errors import ZooError, unknown_name
from zoo.core.spec import Backend, ExactPosterior, ModelSpec

DTYPE = torch.float64


@dataclass(frozen=True)
class Site:
    """A latent sample site as found by tracing the model once."""

    name: str
    shape: tuple[int, ...]
    batch_shape: tuple[int, ...]
    event_shape: tuple[int, ...]
    discrete: bool


@dataclass
class Problem:
    """A model bound to validated data and hyperparameters: what every back-end receives.

    ``problem.model`` is a zero-argument Pyro model conditioned on the data; ``np_data`` and
    ``np_hyper`` are the same values as numpy arrays for closed-form code.
    """

    spec: ModelSpec
    data: dict[str, Any]
    hyper: dict[str, Any]
    np_data: dict[str, Any]
    np_hyper: dict[str, Any]
    sites: dict[str, Site]
    observed: tuple[str, ...]
    max_plate_nesting: int
    _exact: list = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def latent_sites(self) -> tuple[str, ...]:
        return tuple(self.sites)

    @property
    def discrete_sites(self) -> tuple[str, ...]:
        return tuple(k for k, s in self.sites.items() if s.discrete)

    def model(self, *args: Any, **kwargs: Any) -> Any:
        """The Pyro model with data and hyperparameters bound (arguments are ignored)."""
        return self.spec.model(**self.data, **self.hyper)

    def exact(self) -> ExactPosterior | None:
        """The exact posterior, computed once; None where the model has none."""
        if self.spec.exact_reason(self.np_hyper, self.np_data) is not None:
            return None
        if not self._exact:
            self._exact.append(self.spec.reference.exact(self.np_data, self.np_hyper))
        return self._exact[0]

    def error(self, message: str) -> ZooError:
        return ZooError(f"model {self.name!r}: {message}")


def check_int(value: Any, what: str, minimum: int = 0, where: str = "") -> int:
    """``value`` as an int, or a ZooError naming ``what`` when it is not an integer >= ``minimum``
    (bools are refused). The one integer check: seeds, sizes, counts, horizons."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ZooError(f"{where}{what} must be {kind}, got {value!r}")
    return int(value)


def check_seed(seed: Any) -> int:
    """A seed: a non-negative integer."""
    return check_int(seed, "seed", 0)


def _show(values: np.ndarray, index: np.ndarray, limit: int = 5) -> str:
    """Render up to ``limit`` bad values with their indices."""
    idx = np.argwhere(index)
    parts = []
    for i in idx[:limit]:
        pos = tuple(int(j) for j in i)
        parts.append(f"{pos[0] if len(pos) == 1 else pos}: {values[pos].item()!r}")
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return "{" + ", ".join(parts) + "}" + more


def _to_array(where: str, key: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise ZooError(f"{where}{key} could not be read as an array: {e}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ZooError(f"{where}{key} must be numeric, got {value!r:.80}")
    return arr


def _check_finite(where: str, key: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr.astype(float))
    if bad.any():
        raise ZooError(f"{where}{key} has non-finite values (NaN or inf) at index {_show(arr.reshape(arr.shape or (1,)), bad.reshape(bad.shape or (1,)))}")


def _check_support(where: str, what: str, arr: np.ndarray, support: constraints.Constraint,
                   event_dim: int = 0) -> None:
    if support is constraints.real:
        return
    t = torch.as_tensor(arr, dtype=DTYPE)
    ok = support.check(t).cpu().numpy()
    if np.all(ok):
        return
    flat = np.asarray(arr)
    if event_dim and ok.ndim < flat.ndim:  # a matrix or vector constraint: report whole events
        raise ZooError(f"{where}{what} is outside the support {support}: {flat.tolist()!r:.200}")
    raise ZooError(f"{where}{what} is outside the support {support} at index {_show(flat, ~ok.astype(bool))}")


def check_hyper(spec: ModelSpec, hyper: Mapping[str, Any] | None) -> tuple[dict, dict, dict]:
    """Validate hyperparameters; returns torch values, numpy values and the sizes they fix."""
    where = f"model {spec.name!r}: "
    hyper = dict(hyper or {})
    for k in hyper:
        if k not in spec.hyper:
            raise unknown_name("hyperparameter", k, spec.hyper, where)
    torch_h, np_h, sizes = {}, {}, {}
    for k, h in spec.hyper.items():
        value = hyper.get(k, h.default)
        if h.choices is not None:
            if value not in h.choices:
                raise ZooError(f"{where}hyperparameter {k} must be one of {', '.join(h.choices)}, got {value!r}")
            torch_h[k] = np_h[k] = value
            continue
        arr = _to_array(where, f"hyperparameter {k}", value).astype(float)
        _check_finite(where, f"hyperparameter {k}", arr)
        default_ndim = np.ndim(h.default)
        if arr.ndim != default_ndim:
            raise ZooError(f"{where}hyperparameter {k} must have {default_ndim} dimension(s) "
                           f"like its default {h.default!r}, got shape {arr.shape}")
        if h.constraint is not None:
            event_dim = 2 if h.constraint is constraints.positive_definite else 0
            _check_support(where, f"hyperparameter {k}={arr.tolist()!r}", arr, h.constraint, event_dim)
        if h.size is not None:
            if arr.ndim < 1 or arr.shape[0] < 1:
                raise ZooError(f"{where}hyperparameter {k} must have at least one entry, got {arr.tolist()!r}")
            sizes[h.size] = arr.shape[0]
        np_h[k] = arr if arr.ndim else float(arr)
        torch_h[k] = torch.as_tensor(arr, dtype=DTYPE)
    return torch_h, np_h, sizes


def check_data(spec: ModelSpec, data: Mapping[str, Any] | None, sizes: dict[str, int]) -> tuple[dict, dict]:
    where = f"model {spec.name!r}: "
    if data is None:
        raise ZooError(f"{where}no data given; data keys: {', '.join(spec.data)} (zoo.simulate makes some)")
    if not isinstance(data, Mapping):
        raise ZooError(f"{where}data must be a dict of named arrays, got {type(data).__name__}")
    for k in data:
        if k not in spec.data:
            raise unknown_name("data key", k, spec.data, where)
    torch_d, np_d = {}, {}
    for k, key in spec.data.items():
        if k not in data or data[k] is None:
            if key.optional:
                continue
            raise ZooError(f"{where}missing data key {k!r} (expected shape {key.dims})")
        arr = _to_array(where, f"data key {k}", data[k])
        _check_finite(where, f"data key {k}", arr.astype(float))
        lowest = len(key.dims) if key.min_ndim is None else key.min_ndim
        if not lowest <= arr.ndim <= len(key.dims):
            allowed = " or ".join(str(key.dims[:n]) for n in range(lowest, len(key.dims) + 1))
            raise ZooError(f"{where}data key {k} must have shape {allowed}, got shape {arr.shape}")
        for name, n in zip(key.dims, arr.shape):
            if n < 1:
                raise ZooError(f"{where}data key {k} is empty along {name} (shape {arr.shape})")
            if sizes.setdefault(name, n) != n:
                raise ZooError(f"{where}data key {k} has {name}={n}, but {name}={sizes[name]} elsewhere "
                               f"(shape {arr.shape}; hyperparameters and other keys fix {name})")
        if key.dtype == "long":
            if not np.all(arr == np.round(arr)):
                raise ZooError(f"{where}data key {k} must hold integers, got {_show(arr, arr != np.round(arr))}")
            arr = arr.astype(np.int64)
            tensor = int(arr) if arr.ndim == 0 else torch.as_tensor(arr, dtype=torch.long)
        else:
            arr = arr.astype(float)
            tensor = torch.as_tensor(arr, dtype=DTYPE)
        if key.support is not None:
            _check_support(where, f"data key {k}", arr, key.support)
        torch_d[k], np_d[k] = tensor, arr
    return torch_d, np_d


def trace_model(spec: ModelSpec, data: dict, hyper: dict) -> pyro.poutine.Trace:
    """Run the model once with Pyro's validation on; errors become a ZooError."""
    try:
        with pyro.validation_enabled(True), torch.no_grad():
            return poutine.trace(spec.model).get_trace(**data, **hyper)
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
        raise ZooError(f"model {spec.name!r}: the model failed on this data and these "
                       f"hyperparameters: {e}") from e


def prepare(spec: ModelSpec, data: Mapping[str, Any] | None, hyper: Mapping[str, Any] | None = None) -> Problem:
    """Validate data and hyperparameters against ``spec`` and bind them into a `Problem`.

    Raises
    ------
    ZooError
        naming the model, the data key, hyperparameter or site, and the bad value.
    """
    torch_h, np_h, sizes = check_hyper(spec, hyper)
    torch_d, np_d = check_data(spec, data, sizes)
    if spec.check is not None:
        spec.check(np_d, np_h)
    tr = trace_model(spec, torch_d, torch_h)
    where = f"model {spec.name!r}: "
    declared = {k for k, v in spec.data.items() if v.support is not None}
    sites: dict[str, Site] = {}
    observed = []
    nesting = 0
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        dims = [f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
        nesting = max([nesting] + [-d for d in dims])
        fn = site["fn"]
        if site["is_observed"]:
            observed.append(name)
            if name not in declared:
                _check_support(where, f"observed site {name!r} (data)", site["value"].detach().numpy(),
                               fn.support, fn.event_dim)
            continue
        sites[name] = Site(name, tuple(site["value"].shape), tuple(fn.batch_shape),
                           tuple(fn.event_shape), bool(getattr(fn, "has_enumerate_support", False)))
    missing = [s for s in spec.latent_sites if s not in sites]
    if missing:
        raise ZooError(f"{where}latent sites {missing} declared but not found when tracing the model")
    order = list(spec.latent_sites) + [s for s in sites if s not in spec.latent_sites]
    sites = {s: sites[s] for s in order}
    return Problem(spec, torch_d, torch_h, np_d, np_h, sites, tuple(observed), nesting)


def check_options(problem: Problem, backend: Backend, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a back-end's options; returns the options with defaults filled in."""
    where = f"model {problem.name!r}, back-end {backend.name!r}: "
    for k in options:
        if k not in backend.options:
            raise unknown_name("option", k, backend.options, where)
    merged = {**backend.options, **problem.spec.backends.options.get(backend.name, {}), **options}
    choices = dict(backend.choices)
    if "guide" in choices:  # the model's own guide families (an amortised encoder) join the list
        choices["guide"] = tuple(choices["guide"]) + tuple(problem.spec.backends.guides)
        if "guide" not in options and problem.spec.backends.default_guide:
            merged["guide"] = problem.spec.backends.default_guide
    for k, v in options.items():
        default = backend.options[k]
        if k in choices:
            if v not in choices[k]:
                raise unknown_name(k.replace("_", " "), v, choices[k], where)
        elif k == "progress" or isinstance(default, bool):
            if v is not None and not isinstance(v, bool):
                raise ZooError(f"{where}option {k} must be True or False, got {v!r}")
        elif isinstance(default, int):
            check_int(v, f"option {k}", 1, where)
        elif isinstance(default, float):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v <= 0:
                raise ZooError(f"{where}option {k} must be a positive number, got {v!r}")
            if k in ("target_accept", "lr_decay") and v >= 1:
                raise ZooError(f"{where}option {k} must be below 1, got {v!r}")
        elif isinstance(default, str) and not isinstance(v, str):
            raise ZooError(f"{where}option {k} must be a string, got {v!r}")
    return merged

"""Validation of a user's data, hyperparameters and options, and the `Problem` a back-end gets.

Everything a user can get wrong is checked here, before any back-end runs, and reported as a
`ZooError` naming the model, the key or site, and the bad value. Pyro's MCMC switches argument
validation off, so the model is traced once here with validation on and every observed value
is checked against its site's support.

The dtype policy lives here too: every zoo entry point that traces or evaluates a model does
so inside `float64`, so a model written with Python-float parameters (``dist.Normal(0., 1.)``)
computes in float64 on the zoo's float64 data, and the user's default dtype is restored after.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions import ImproperUniform, MaskedDistribution, Unit
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to, constraints

from zoo.core.errors import ZooError, unknown_name
from zoo.core.spec import Backend, ExactPosterior, ModelSpec

DTYPE = torch.float64


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``torch.set_default_dtype(dtype)`` for the duration, the previous default restored
    afterwards (also on an exception)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def float64() -> contextlib.AbstractContextManager[None]:
    """Compute in float64 for the duration (`default_dtype`), so the user's session is left as
    it was afterwards.

    A model written as the Pyro tutorials write them (``dist.Normal(0., 1.)``,
    ``dist.HalfCauchy(5.)``) makes its parameters and draws in the default dtype: float32
    against the zoo's float64 data, where ``X @ w`` raises and a Gamma or HalfCauchy log
    density loses eight digits. Every zoo entry point that traces or evaluates a model
    (validation, `zoo.simulate`, a back-end run and its packaging) runs inside this.
    """
    return default_dtype(DTYPE)


def is_improper(site: Mapping[str, Any]) -> bool:
    """Whether a latent sample site's prior is flat (improper): ``dist.ImproperUniform``, a
    distribution masked off with ``.mask(False)`` or ``poutine.mask(mask=False)``, anywhere
    under ``.expand``/``.to_event`` wrappers (a partial mask counts: some entries are flat)."""
    def off(mask: Any) -> bool:
        return mask is False or (isinstance(mask, torch.Tensor) and not bool(mask.all()))

    if off(site.get("mask")):
        return True
    fn = site["fn"]
    while fn is not None:
        if isinstance(fn, ImproperUniform) or (isinstance(fn, MaskedDistribution) and off(fn._mask)):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def uniform_unconstrained(site: Mapping[str, Any], radius: float = 2.0) -> torch.Tensor:
    """Stan's initial value of a continuous site: uniform(-radius, radius) on the unconstrained
    scale, mapped to the support by ``biject_to(support)``, the shape from ``fn.shape()``.

    It never samples the site's distribution, so it works on flat priors (``ImproperUniform``
    has no ``sample``). A discrete site is drawn from its distribution instead.
    """
    fn = site["fn"]
    if fn.has_enumerate_support:
        return fn.sample().detach()
    transform = biject_to(fn.support)
    u = torch.rand(transform.inverse_shape(fn.shape()), dtype=DTYPE) * (2 * radius) - radius
    value = transform(u).detach()
    value._pyro_custom_init = False
    return value


def _prior_or_flat(site: Mapping[str, Any]) -> torch.Tensor:
    """A prior draw, or for a flat prior (nothing to draw from) `uniform_unconstrained`."""
    return uniform_unconstrained(site) if is_improper(site) else site["fn"].sample().detach()


def traceable(model: Callable[..., Any]) -> Callable[..., Any]:
    """``model`` with its flat-prior sites given `uniform_unconstrained` values instead of a
    draw, so tracing it unconditioned (to find its sites, shapes and plates) never calls
    ``ImproperUniform.sample``. Proper sites are still drawn from their priors."""
    return InitMessenger(_prior_or_flat)(model)


@dataclass(frozen=True)
class Site:
    """A latent sample site as found by tracing the model once."""

    name: str
    shape: tuple[int, ...]
    batch_shape: tuple[int, ...]
    event_shape: tuple[int, ...]
    discrete: bool
    dtype: torch.dtype = DTYPE
    """What a value of the site is conditioned as: ``torch.long`` for a discrete site whose
    distribution draws integers (``Categorical``), else the zoo's float (``Bernoulli`` and
    ``Binomial`` draw floats, and their ``log_prob`` refuses a long value)."""


@dataclass
class Problem:
    """A model bound to validated data and hyperparameters: what every back-end receives.

    ``problem.model`` is a zero-argument Pyro model conditioned on the data; ``np_data`` and
    ``np_hyper`` are the same values as numpy arrays for closed-form code. ``sites`` are the
    latent sample sites, ``observed`` the observed ones (the data); deterministic sites and
    factor terms are neither.
    """

    spec: ModelSpec
    data: dict[str, Any]
    hyper: dict[str, Any]
    np_data: dict[str, Any]
    np_hyper: dict[str, Any]
    sites: dict[str, Site]
    observed: tuple[str, ...]
    max_plate_nesting: int
    deterministic: tuple[str, ...] = ()
    """``pyro.deterministic`` sites: derived quantities, in the posterior, never data."""
    factors: tuple[str, ...] = ()
    """``pyro.factor`` terms: in the log density, never a pointwise log-likelihood."""
    improper: tuple[str, ...] = ()
    """latent sites with a flat prior (``ImproperUniform``, ``.mask(False)``): back-ends that
    draw from the prior refuse the model."""
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

    def proper_prior(self, what: str) -> str | None:
        """Why ``what`` (something that draws from the prior) cannot run on this model, or None
        when every prior is proper (see `flat_prior`)."""
        return flat_prior(what, self.improper)


def flat_prior(what: str, improper: Sequence[str]) -> str | None:
    """Why ``what``, which draws from the prior, cannot run when the sites ``improper`` have a
    flat prior; None when there are none."""
    if not improper:
        return None
    return (f"{what} draws from the prior, and the prior of {', '.join(map(repr, improper))} is flat "
            "(ImproperUniform or .mask(False)): there is nothing to draw from")


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
    """Run the model once in float64 with Pyro's validation on (flat-prior sites get a value
    without being sampled, see `traceable`); errors become a ZooError."""
    try:
        with float64(), pyro.validation_enabled(True), torch.no_grad():
            return poutine.trace(traceable(spec.model)).get_trace(**data, **hyper)
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
        raise ZooError(f"model {spec.name!r}: the model failed on this data and these "
                       f"hyperparameters: {e}") from e


def site_kind(site: Mapping[str, Any]) -> str:
    """What a sample site of a trace is: ``"deterministic"`` (``pyro.deterministic``, a derived
    quantity), ``"factor"`` (``pyro.factor``, a term of the log density), ``"observed"`` (data)
    or ``"latent"``."""
    if site["infer"].get("_deterministic"):
        return "deterministic"
    if site["is_observed"] and (isinstance(site["fn"], Unit) or site["infer"].get("is_auxiliary")):
        return "factor"
    return "observed" if site["is_observed"] else "latent"


SUPPORT_RETRIES = 50  # prior draws tried before data outside a latent-dependent support are refused


def _check_observed(spec: ModelSpec, data: dict, hyper: dict, name: str, site: Mapping[str, Any]) -> None:
    """Check an observed site's data against its support. A support whose bounds come from the
    latent values (``Uniform(0, theta)``) is checked again at other prior draws (seeded, the
    user's random state untouched) before the data are refused: they are impossible only if
    no draw admits them."""
    where, what = f"model {spec.name!r}: ", f"observed site {name!r} (data)"
    value, fn = site["value"].detach(), site["fn"]
    try:
        _check_support(where, what, value.numpy(), fn.support, fn.event_dim)
    except ZooError:
        bounds = [getattr(fn.support, a, None) for a in ("lower_bound", "upper_bound")]
        if not any(isinstance(b, torch.Tensor) for b in bounds):
            raise
        for seed in range(SUPPORT_RETRIES):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                support = trace_model(spec, data, hyper).nodes[name]["fn"].support
            if bool(support.check(value).all()):
                return
        raise


def prepare(spec: ModelSpec, data: Mapping[str, Any] | None, hyper: Mapping[str, Any] | None = None) -> Problem:
    """Validate data and hyperparameters against ``spec`` and bind them into a `Problem`.

    The model is traced once (`trace_model`) and its sample sites sorted by `site_kind`:
    latent sites (flat priors among them recorded in ``improper``), observed sites (checked
    against their support), deterministic sites and factor terms.

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
    kinds: dict[str, list[str]] = {"observed": [], "deterministic": [], "factor": [], "improper": []}
    nesting = 0
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        dims = [f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
        nesting = max([nesting] + [-d for d in dims])
        fn, kind = site["fn"], site_kind(site)
        if kind != "latent":
            kinds[kind].append(name)
            if kind == "observed" and name not in declared:
                _check_observed(spec, torch_d, torch_h, name, site)
            continue
        if is_improper(site):
            kinds["improper"].append(name)
        discrete = bool(getattr(fn, "has_enumerate_support", False))
        integer = discrete and not torch.as_tensor(site["value"]).is_floating_point()
        sites[name] = Site(name, tuple(site["value"].shape), tuple(fn.batch_shape),
                           tuple(fn.event_shape), discrete, torch.long if integer else DTYPE)
    missing = [s for s in spec.latent_sites if s not in sites]
    if missing:
        raise ZooError(f"{where}latent sites {missing} declared but not found when tracing the model")
    order = list(spec.latent_sites) + [s for s in sites if s not in spec.latent_sites]
    sites = {s: sites[s] for s in order}
    return Problem(spec, torch_d, torch_h, np_d, np_h, sites, tuple(kinds["observed"]), nesting,
                   tuple(kinds["deterministic"]), tuple(kinds["factor"]), tuple(kinds["improper"]))


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
    reason = backend.refuses(problem, merged) if backend.refuses else None
    if reason:
        raise ZooError(f"{where}does not apply with these options: {reason}")
    return merged


def check_names(value: Any, what: str, where: str = "") -> list[str]:
    """A list of names (back-end labels, model names) as a list; a ZooError for a single string
    (which would be read letter by letter) or anything that is not a sequence of strings."""
    if isinstance(value, str) or not isinstance(value, Sequence) or \
            not all(isinstance(v, str) for v in value):
        raise ZooError(f"{where}{what} must be a list of names such as ['exact', 'nuts'], got {value!r}")
    return list(value)

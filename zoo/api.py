"""The public API: list, simulate, run, compare and register.

A thin facade: validation lives in `zoo.core.problem`, the registry in `zoo.registry`, running
and packaging a back-end in `zoo.results`, scoring in `zoo.scoring`.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyro import poutine
from tqdm.auto import tqdm

from zoo import registry, scoring
from zoo.core.errors import InferenceError, ZooError
from zoo.core.problem import (
    Problem,
    check_data,
    check_hyper,
    check_int,
    check_names,
    check_options,
    check_seed,
    flat_prior,
    float64,
    is_improper,
    prepare,
    site_kind,
    traceable,
    trace_model,
)
from zoo.core.spec import Backend, Backends, DataKey, ExactPosterior, ModelSpec, Reference, StoredReference
from zoo.inference.common import seed_all
from zoo.results import Comparison, Draws, Result, execute, execute_draws, scored_sites

EXACT_REFERENCE_DRAWS = 20000


def list_models(source: str | None = None) -> list[str]:
    """Names of every registered model, or of those from one ``source``: ``"catalogue"``
    (the study notes), ``"posteriordb"`` (the suite of published posteriors) or ``"user"``
    (`register`)."""
    if source is None:
        return registry.names()
    return [n for n in registry.names() if registry.describe(n)[0] == source]


def catalogue() -> pd.DataFrame:
    """Every model with where it comes from: columns ``name``, ``source`` (``catalogue``,
    ``posteriordb``, ``user``), ``kind`` (``conjugate``, ``hierarchical``, ``logistic
    regression``, ...) and ``description`` (one line)."""
    return pd.DataFrame([dict(zip(("name", "source", "kind", "description"), (n, *registry.describe(n))))
                         for n in registry.names()])


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

    Raises
    ------
    ZooError
        for an unknown size or hyperparameter, and for a model with a flat prior
        (``ImproperUniform``, ``.mask(False)``) on a latent site not fixed by ``truth``: there
        is no prior to draw it from.
    """
    spec = registry.get_model(name)
    seed = check_seed(seed)
    torch_h, np_h, implied = check_hyper(spec, hyper)
    params = inspect.signature(spec.model).parameters
    known = set(spec.sizes) | {d for key in spec.data.values() for d in key.dims} | \
        {k for k in params if k not in spec.data and k not in spec.hyper}
    for k, v in sizes.items():
        if k in spec.hyper:
            raise ZooError(f"model {name!r}: {k} is a hyperparameter; pass hyper={{{k!r}: {v!r}}}")
        if k not in known:
            raise ZooError(f"model {name!r}: unknown size {k!r}; sizes: {', '.join(sorted(spec.sizes)) or '(none)'}")
    sizes = {**spec.sizes, **implied, **sizes}
    for k, v in sizes.items():
        check_int(v, f"size {k}", 1, f"model {name!r}: ")
    rng = np.random.default_rng(seed)
    inputs = spec.inputs(rng, sizes, np_h) if spec.inputs else {}
    problem_inputs = {k: torch.as_tensor(np.asarray(v)) if np.ndim(v) else np.asarray(v).item()
                      for k, v in inputs.items()}
    size_kw = {k: v for k, v in sizes.items() if k in params and k not in spec.data}
    model = spec.model
    if truth:
        model = poutine.condition(model, {k: torch.as_tensor(np.asarray(v, dtype=float), dtype=torch.float64)
                                          for k, v in truth.items()})
    with float64(), torch.no_grad():
        seed_all(seed)
        tr = poutine.trace(traceable(model)).get_trace(**_as_float64(problem_inputs), **torch_h, **size_kw)
    flat = [k for k, site in tr.nodes.items() if site["type"] == "sample" and site_kind(site) == "latent"
            and is_improper(site)]
    if flat:
        what = "zoo.simulate (and zoo.sbc, which simulates with it)"
        raise ZooError(f"model {name!r}: {flat_prior(what, flat)}; fix those sites with truth={{...}} to simulate data")
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


def prepare_problem(spec: ModelSpec, data: Mapping[str, Any] | None, hyper: Mapping[str, Any] | None,
                    truth: Mapping[str, Any] | None = None) -> tuple[Problem, dict | None]:
    """Validate the data once and bind it to the model; ``data=None`` takes the model's default
    data (a registered model's example, else ``simulate(name, seed=0)`` and its truth)."""
    if data is None:
        if spec.example is not None:
            data, truth = dict(spec.example), None
        else:
            data, truth = simulate(spec.name, seed=0, hyper=hyper)
    return prepare(spec, data, hyper), truth


def plan(spec: ModelSpec, labels: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None,
         common: Mapping[str, Any], where: str) -> dict[str, tuple[Backend, dict[str, Any]]]:
    """Each label's back-end and its options: the label's own (``svi:full_rank`` gives the
    guide), then ``common`` where the back-end accepts it, then ``options[label]``.

    Raises a ZooError (prefixed by ``where``) for an unknown label, options given for a label
    not in ``labels``, or an option the back-end does not take.
    """
    options = dict(options or {})
    for label in options:
        if label not in labels:
            raise ZooError(f"{where}options given for {label!r}, which is not among the back-ends {list(labels)}")
    out = {}
    for label in labels:
        name, extra = registry.parse_label(label)
        b = registry.get_backend(spec, name)
        bad = [k for k in options.get(label, {}) if k not in b.options]
        if bad:
            raise ZooError(f"{where}back-end {b.name!r} has no option {bad[0]!r}; its options: {', '.join(b.options)}")
        out[label] = (b, {**{k: v for k, v in common.items() if k in b.options}, **extra, **options.get(label, {})})
    return out


def check_common(common: Mapping[str, Any], plans: Sequence[Mapping[str, tuple[Backend, dict]]],
                 labels: Sequence[str], where: str) -> None:
    """Every option given to all back-ends is accepted by at least one of them."""
    accepted = {o for p in plans for b, _ in p.values() for o in b.options}
    for k in common:
        if k not in accepted:
            raise ZooError(f"{where}option {k!r} is accepted by none of the back-ends {list(labels)}")


def default_backend(problem: Problem) -> str:
    """The back-end `run` takes when none is named: the first of the model's preferred ones
    (`Backends.default`) that applies to this problem."""
    preferred = list(problem.spec.backends.default)
    for name in preferred:
        if not registry.not_applicable(problem, registry.get_backend(problem.spec, name)):
            return name
    return preferred[0]  # none applies: running it raises with the reason


def run(name: str, backend: str | None = None, data: Mapping[str, Any] | None = None, seed: int = 0,
        hyper: Mapping[str, Any] | None = None, truth: Mapping[str, Any] | None = None,
        **options: Any) -> Result:
    """Run one back-end on one model.

    Parameters
    ----------
    name : model name (`list_models`).
    backend : ``exact``, ``nuts``, ``hmc``, ``svi``, ``importance`` or one of the model's own;
        None for the model's default (`ModelSpec.backends.default`: ``exact`` where there is a
        closed form, the amortised ``svi`` for deep models, ...).
    data : dict of arrays keyed by the model's data keys; None for the model's default data.
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
    seed = check_seed(seed)
    problem, b, opts, label, truth = checked_run(name, backend, data, hyper, truth, options)
    return execute(problem, b, opts, seed, label, truth)


def run_draws(name: str, backend: str | None = None, data: Mapping[str, Any] | None = None, seed: int = 0,
              hyper: Mapping[str, Any] | None = None, **options: Any) -> Draws:
    """`run`'s draws without the rest of a `Result` (InferenceData, LOO, scores): the same
    checks, fit and draws for the same seed, for callers that run many fits and read only the
    draws (SBC's simulations, Thompson sampling's refits). Parameters as in `run`."""
    seed = check_seed(seed)
    problem, b, opts, label, _ = checked_run(name, backend, data, hyper, None, options)
    return execute_draws(problem, b, opts, seed, label)


def checked_run(name: str, backend: str | None, data: Mapping[str, Any] | None,
                hyper: Mapping[str, Any] | None, truth: Mapping[str, Any] | None,
                options: Mapping[str, Any]) -> tuple[Problem, Backend, dict, str, Mapping[str, Any] | None]:
    """Everything `run` checks before inference starts: the problem, the back-end, its
    options (the model's defaults under the user's), its label and the truth.

    Raises
    ------
    ZooError
        for any bad input, or a back-end that does not apply (naming those that do).
    """
    spec = registry.get_model(name)
    if backend is not None:
        registry.get_backend(spec, registry.parse_label(backend)[0])  # an unknown back-end before the data
    problem, truth = prepare_problem(spec, data, hyper, truth)
    label = backend if backend is not None else default_backend(problem)
    b, opts = plan(spec, [label], None, {}, f"model {name!r}: ")[label]
    opts = check_options(problem, b, {**opts, **options})
    reason = registry.not_applicable(problem, b)
    if reason:
        applicable = [k for k, x in registry.backends_for(spec).items() if not registry.not_applicable(problem, x)]
        raise ZooError(f"model {name!r}: back-end {label!r} does not apply: {reason}. "
                       f"Back-ends that apply: {', '.join(applicable)}")
    return problem, b, opts, label, truth


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
        (`Backends.skip_by_default`, too slow) listed with why.
    truth : the simulated latent values, for the model's scores against the truth (known
        when ``data`` is None).
    options : per-label options, ``{"nuts": {"num_samples": 500}}``.
    **common : options given to every back-end that accepts them (``num_samples=500``).

    Every input is validated before the first back-end starts.
    """
    seed = check_seed(seed)
    spec = registry.get_model(name)
    where = f"model {name!r}: "
    labels = check_names(backends, "backends", where) if backends is not None else list(registry.backends_for(spec))
    skipped = {k: v for k, v in spec.backends.skip_by_default.items() if backends is None and k in labels}
    labels = [k for k in labels if k not in skipped]
    plans = plan(spec, labels, options, common, where)
    check_common(common, [plans], labels, where)
    problem, truth = prepare_problem(spec, data, hyper, truth)  # one problem for every back-end
    checked = {}
    for label, (b, opts) in plans.items():
        if progress is not None:
            opts = {**opts, "progress": progress}
        checked[label] = (b, check_options(problem, b, opts), registry.not_applicable(problem, b))
    results: dict[str, Result] = {}
    rows = [{"backend": k, "note": f"left out by default (name it to run it): {why}"} for k, why in skipped.items()]
    scalar_frames = []
    exact = problem.exact()
    exact_draws = exact.sample(np.random.default_rng(seed + 1), EXACT_REFERENCE_DRAWS) \
        if exact is not None and exact.sample is not None else None
    notes = [spec.scoring.relabel_note] if spec.scoring.relabel_note else []
    for label, (b, opts, reason) in tqdm(checked.items(), desc=f"compare {name}", disable=not progress):
        if reason:
            rows.append({"backend": label, "note": f"not applicable: {reason}"})
            continue
        try:
            result = execute(problem, b, opts, seed, label, truth)
        except InferenceError as e:  # one back-end breaking down does not hide the others
            rows.append({"backend": label, "note": f"failed: {e}"})
            continue
        results[label] = result
        row, scalars = scoring.score(label, result, scored_sites(problem), exact, exact_draws, notes)
        rows.append(row)
        scalar_frames.append(scalars)
    scalars = pd.concat(scalar_frames, ignore_index=True) if scalar_frames else pd.DataFrame()
    return Comparison(name, scoring.make_table(rows), scalars, results, exact, scored_sites(problem))


def register(name: str, model: Callable[..., Any], data: Mapping[str, Any], *,
             exact: Callable[[dict, dict], ExactPosterior] | None = None,
             reference: StoredReference | None = None,
             options: Mapping[str, Mapping[str, Any]] | None = None,
             source: str = "user", kind: str = "", description: str = "",
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
    reference : optional summaries of reference draws for ``data`` (a `StoredReference`,
        e.g. posteriordb's): `compare` scores every back-end against them, on ``data`` only.
    options : back-end option defaults that suit the model, ``{"nuts": {"target_accept":
        0.95}}`` (the user's options still win).
    source, kind, description : where the model comes from (``"user"``; the zoo's
        posteriordb suite says ``"posteriordb"``), what sort of model it is and one line
        about it, for `list_models` and `catalogue`.

    The model runs in float64 whatever it writes (``dist.Normal(0., 1.)`` is fine); plates are
    optional; ``pyro.deterministic`` sites join the posterior, ``pyro.factor`` terms the log
    density, and flat priors (``dist.ImproperUniform``, ``.mask(False)``) work with nuts, hmc
    and svi (back-ends that draw from the prior refuse them).

    Raises
    ------
    ZooError
        for a data key that is not an argument of the model, a model that fails on the data,
        and an observed site whose name is no data key (naming the data key that feeds it,
        where it can tell): the zoo knows the observations by their site names.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ZooError(f"model name must be an identifier, got {name!r}")
    if registry.ships_with_zoo(name) and name in registry.names():
        raise ZooError(f"model {name!r} is a built-in model and cannot be replaced")
    if exact is not None and reference is not None:
        raise ZooError(f"model {name!r}: give an exact posterior or a stored reference, not both")
    if not callable(model):
        raise ZooError(f"model {name!r}: the model must be a callable Pyro model, got {model!r}")
    if not isinstance(data, Mapping):
        raise ZooError(f"model {name!r}: data must be a dict of named arrays, got {type(data).__name__}")
    params = inspect.signature(model).parameters
    keys = {}
    for k, v in data.items():
        if k not in params:
            raise ZooError(f"model {name!r}: data key {k!r} is not an argument of {model.__name__}")
        arr = np.asarray(v)
        keys[k] = DataKey(tuple(f"{k}_dim{i}" for i in range(arr.ndim)),
                          "long" if np.issubdtype(arr.dtype, np.integer) else "float", observed=False)
    draft = ModelSpec(name=name, model=model, data=keys, latent_sites=())
    tensors = check_data(draft, data, {})[0]
    tr = trace_model(draft, tensors, {})
    observed = [k for k, site in tr.nodes.items() if site["type"] == "sample" and site_kind(site) == "observed"]
    for site in observed:
        if site not in keys:
            raise ZooError(f"model {name!r}: {_unnamed_observation(site, tr.nodes[site]['value'], tensors)}")
    keys = {k: DataKey(d.dims, d.dtype, observed=k in observed) for k, d in keys.items()}
    example = {k: np.asarray(v) for k, v in data.items()}
    spec = ModelSpec(
        name=name, model=model, data=keys, latent_sites=(), seed_section=seed_section, example=example,
        inputs=lambda rng, sizes, hyper: {k: v for k, v in example.items() if not keys[k].observed},
        source=source, kind=kind, description=description, reference=Reference(exact=exact),
        backends=Backends(options={k: dict(v) for k, v in (options or {}).items()}),
    )
    problem = prepare(spec, data, None)  # validates the example data and the model once more
    for label, opts in spec.backends.options.items():
        check_options(problem, registry.get_backend(spec, label), opts)
    if reference is not None:
        spec = dataclasses.replace(spec, reference=reference.bind(problem.np_data, name))
    registry.add_model(spec, overwrite=overwrite)
    return spec


def _unnamed_observation(site: str, value: torch.Tensor, data: Mapping[str, Any]) -> str:
    """What to say about an observed site whose name is no data key: which key feeds it (the
    same tensor or a view of it, else equal values) and how to name things."""
    def feeds(t: Any) -> bool:
        if not isinstance(t, torch.Tensor):
            return False
        if value.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            return True
        return value.shape == t.shape and bool(torch.equal(value.to(t.dtype), t))

    source = next((k for k, t in data.items() if feeds(t)), None)
    head = f"observed site {site!r} is not a data key, so the zoo would not know its data as observations"
    if source is None:
        return (f"{head}; data keys: {', '.join(data)}. Name each observed site after the data key "
                "it observes (a constraint that is not data is a pyro.factor)")
    if tuple(value.shape) != tuple(data[source].shape):
        return (f"{head}: it observes part of data key {source!r} (shape {tuple(value.shape)} of "
                f"{tuple(data[source].shape)}; a loop over its entries?). Observe all of {source!r} in one "
                f"site named {source!r}, vectorised (in a pyro.plate, or with .to_event(1))")
    return (f"{head}: data key {source!r} feeds it. Name the site {source!r} "
            f"(pyro.sample({source!r}, ..., obs={source})) or the data key {site!r}")

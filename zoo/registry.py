"""The registry: explicit lists of the zoo's models and back-ends.

Adding a model is one module in `models/` with a `SPEC` and one line in `MODULES`; the
conformance suite in `tests/` then runs it under every back-end that applies, and fails if a
module in `models/` is missing here. Adding a back-end is one module in `inference/` with a
`BACKEND` and one line in `BACKENDS`.

The posteriordb suite (`zoo.posteriordb`) ships with the zoo too, but registers through
`zoo.register` like a user's model; its registrations are deferred (`defer`) to the first
use of each model, so that ``import zoo`` reads and traces none of them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zoo import posteriordb
from zoo.core.errors import ZooError, unknown_name
from zoo.core.problem import Problem
from zoo.core.spec import Backend, ModelSpec, first_paragraph
from zoo.inference import enum, exact, hmc, importance, nuts, svi
from zoo.models import (
    bayesian_linear_regression,
    bernoulli_bandit,
    beta_bernoulli,
    dirichlet_categorical,
    discrete_latent,
    dp_mixture,
    gaussian_mixture,
    linear_gaussian_ssm,
    logistic_regression,
    mixture_ppca,
    mvn_wishart,
    nce_unnormalized,
    normal_gamma,
    normal_known_mean,
    normal_known_variance,
    poisson_gamma,
    ppca,
    realnvp_flow,
    uniform_pareto,
    vae,
    vrnn,
)

MODULES = [
    beta_bernoulli,
    normal_known_variance,
    normal_known_mean,
    normal_gamma,
    mvn_wishart,
    dirichlet_categorical,
    poisson_gamma,
    uniform_pareto,
    bayesian_linear_regression,
    bernoulli_bandit,
    gaussian_mixture,
    ppca,
    mixture_ppca,
    dp_mixture,
    logistic_regression,
    linear_gaussian_ssm,
    vae,
    vrnn,
    discrete_latent,
    realnvp_flow,
    nce_unnormalized,
]

MODELS: dict[str, ModelSpec] = {m.SPEC.name: m.SPEC for m in MODULES}
# every process that imports the zoo has these (Ray workers too)
SHIPPED = frozenset(MODELS) | frozenset(posteriordb.MODULES)

# the catalogue's models by section of CONCEPTS.md (`zoo.catalogue`'s ``kind``)
SECTIONS = {
    "conjugate": ("beta_bernoulli", "normal_known_variance", "normal_known_mean", "normal_gamma", "mvn_wishart",
                  "dirichlet_categorical", "poisson_gamma", "uniform_pareto", "bayesian_linear_regression"),
    "logistic regression": ("logistic_regression",),
    "latent structure": ("gaussian_mixture", "ppca", "mixture_ppca", "dp_mixture", "linear_gaussian_ssm"),
    "deep latent variable": ("vae", "vrnn", "discrete_latent", "realnvp_flow", "nce_unnormalized"),
    "decisions": ("bernoulli_bandit",),
}


@dataclass(frozen=True)
class Deferred:
    """A model registered on its first use: ``register()`` registers it (through
    `zoo.register`); ``source``, ``kind`` and ``description`` describe it until then."""

    register: Callable[[], Any]
    source: str
    kind: str = ""
    description: str = ""


DEFERRED: dict[str, Deferred] = {}
ORDER: list[str] = list(MODELS)  # every name, in the order models were added

BACKENDS: dict[str, Backend] = {b.name: b for b in (exact.BACKEND, nuts.BACKEND, hmc.BACKEND,
                                                    svi.BACKEND, enum.BACKEND, importance.BACKEND)}


def get_model(name: str) -> ModelSpec:
    """The `ModelSpec` registered under ``name``.

    Raises
    ------
    ZooError
        for an unknown name, listing the valid ones and the closest.
    """
    if isinstance(name, str) and name in DEFERRED:
        DEFERRED.pop(name).register()  # out of DEFERRED first: the registration adds it to MODELS
    if not isinstance(name, str) or name not in MODELS:
        raise unknown_name("model", name, names())
    return MODELS[name]


def names() -> list[str]:
    """Every model's name, registered or deferred, in the order they were added."""
    return [n for n in ORDER if n in MODELS or n in DEFERRED]


def describe(name: str) -> tuple[str, str, str]:
    """(source, kind, description) of a model, without registering a deferred one."""
    if name in DEFERRED:
        d = DEFERRED[name]
        return d.source, d.kind, d.description
    spec = get_model(name)
    section = next((k for k, v in SECTIONS.items() if name in v), "")
    return spec.source, spec.kind or section, spec.description or first_paragraph(spec.doc)


def defer(name: str, register: Callable[[], Any], *, source: str, kind: str = "", description: str = "") -> None:
    """List a model now and register it on first use (`get_model`): ``register()`` must
    register ``name`` (through `zoo.register`)."""
    if name in MODELS or name in DEFERRED:
        raise ZooError(f"model {name!r} is already registered")
    DEFERRED[name] = Deferred(register, source, kind, description)
    ORDER.append(name)


def backends_for(spec: ModelSpec) -> dict[str, Backend]:
    """The generic back-ends followed by the model's own (``cavi``, ``em``, ``gibbs``)."""
    return {**BACKENDS, **spec.backends.own}


def get_backend(spec: ModelSpec, name: str) -> Backend:
    """The back-end ``name`` for the model ``spec``, or a ZooError saying why not."""
    available = backends_for(spec)
    if isinstance(name, str) and name in available:
        return available[name]
    owners = [m.name for m in MODELS.values() if name in m.backends.own]
    if owners:
        raise ZooError(f"model {spec.name!r}: back-end {name!r} does not apply: it is specific to "
                       f"{', '.join(owners)}. Back-ends for {spec.name}: {', '.join(available)}")
    raise unknown_name("back-end", name, available, f"model {spec.name!r}: ")


def parse_label(label: str) -> tuple[str, dict[str, Any]]:
    """A back-end label and the options it carries: ``"svi:full_rank"`` is back-end svi with
    guide full_rank."""
    if isinstance(label, str) and ":" in label:
        backend, guide = label.split(":", 1)
        return backend, {"guide": guide}
    return label, {}


def not_applicable(problem: Problem, backend: Backend) -> str | None:
    """Why ``backend`` cannot run on ``problem``: its own check, then the model's limits."""
    own = backend.applicable(problem) if backend.applicable else None
    return own or problem.spec.backends.limits.get(backend.name)


def ships_with_zoo(name: str) -> bool:
    """Whether ``name`` is one of the zoo's own models, the catalogue's or the posteriordb
    suite's: every process that imports the zoo has it (not one registered in this process)."""
    return name in SHIPPED


def add_model(spec: ModelSpec, overwrite: bool = False) -> None:
    """Register a model (see `zoo.register`)."""
    if spec.name in DEFERRED or (spec.name in MODELS and not overwrite):
        raise ZooError(f"model {spec.name!r} is already registered; pass overwrite=True to replace it")
    if spec.name not in ORDER:
        ORDER.append(spec.name)
    MODELS[spec.name] = spec

"""The registry: explicit lists of the zoo's models and back-ends.

Adding a model is one module in `models/` with a `SPEC` and one line in `MODULES`; the
conformance suite in `tests/` then runs it under every back-end that applies, and fails if a
module in `models/` is missing here. Adding a back-end is one module in `inference/` with a
`BACKEND` and one line in `BACKENDS`.
"""
from __future__ import annotations

from typing import Any

from zoo.core.errors import ZooError, unknown_name
from zoo.core.problem import Problem
from zoo.core.spec import Backend, ModelSpec
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
SHIPPED = frozenset(MODELS)  # every process that imports the zoo has these (Ray workers too)

BACKENDS: dict[str, Backend] = {b.name: b for b in (exact.BACKEND, nuts.BACKEND, hmc.BACKEND,
                                                    svi.BACKEND, enum.BACKEND, importance.BACKEND)}


def get_model(name: str) -> ModelSpec:
    """The `ModelSpec` registered under ``name``.

    Raises
    ------
    ZooError
        for an unknown name, listing the valid ones and the closest.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise unknown_name("model", name, MODELS)
    return MODELS[name]


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
    """Whether ``name`` is one of the zoo's own models (not one registered in this process)."""
    return name in SHIPPED


def add_model(spec: ModelSpec, overwrite: bool = False) -> None:
    """Register a user's model (see `zoo.register`)."""
    if spec.name in MODELS and not overwrite:
        raise ZooError(f"model {spec.name!r} is already registered; pass overwrite=True to replace it")
    MODELS[spec.name] = spec

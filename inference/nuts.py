"""Back-end ``nuts``: the No-U-Turn sampler (adaptive step size and mass matrix).

Batched over chains (`inference.batched`) where the model allows, Pyro's NUTS kernel
otherwise (option ``sampler``, see `inference.mcmc`).
"""
from __future__ import annotations

from functools import partial

from pyro.infer import NUTS

from zoo.core.problem import Problem
from zoo.core.spec import Backend, Fit
from zoo.inference import batched
from zoo.inference.common import needs_continuous
from zoo.inference.mcmc import (
    MCMC_CHOICES,
    MCMC_OPTIONS,
    SafePotential,
    run_sampler,
)


class SafeNUTS(SafePotential, NUTS):
    """Pyro's NUTS with numerical failures of the potential rejected (see `SafePotential`)."""


def fit(problem: Problem, *, seed: int, num_samples: int, num_warmup: int, num_chains: int,
        target_accept: float, sampler: str, dense_mass: bool, max_tree_depth: int, jit: bool, checkpoint: str,
        progress: bool | None) -> Fit:
    """Run ``num_chains`` NUTS chains of ``num_warmup`` + ``num_samples`` iterations."""
    kernel = partial(SafeNUTS, target_accept_prob=target_accept, full_mass=dense_mass, max_tree_depth=max_tree_depth,
                     jit_compile=jit, ignore_jit_warnings=True)
    transition = partial(batched.nuts_transition, max_tree_depth=max_tree_depth)
    return run_sampler(problem, kernel, transition, sampler=sampler, seed=seed, num_samples=num_samples,
                       num_warmup=num_warmup, num_chains=num_chains, target_accept=target_accept,
                       dense_mass=dense_mass, checkpoint=checkpoint, progress=progress,
                       settings={"kernel": "nuts", "target_accept": target_accept, "jit": jit,
                                 "max_tree_depth": max_tree_depth})


BACKEND = Backend(
    name="nuts",
    fit=fit,
    options={**MCMC_OPTIONS, "max_tree_depth": 10},
    choices=MCMC_CHOICES,
    summary="No-U-Turn Hamiltonian Monte Carlo, several chains (batched)",
    applicable=needs_continuous,
)

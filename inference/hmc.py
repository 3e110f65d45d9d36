"""Back-end ``hmc``: Hamiltonian Monte Carlo with a fixed number of leapfrog steps.

The step size adapts during warm-up; the number of leapfrog steps per iteration is fixed
(``num_leapfrog``) rather than the trajectory length, so that a posterior with a hard edge
(``uniform_pareto``), where the adapted step size collapses, costs a bounded time per
iteration instead of tens of thousands of steps. Batched over chains (`inference.batched`,
with the step size jittered by 20% per iteration) where the model allows, Pyro's HMC kernel
otherwise (option ``sampler``, see `inference.mcmc`).
"""
from __future__ import annotations

from functools import partial

from pyro.infer import HMC

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


class FixedStepsHMC(SafePotential, HMC):
    """Pyro's HMC, but with ``num_steps`` leapfrog steps whatever the adapted step size.

    Pyro's own HMC turns ``num_steps`` into a trajectory length and then takes
    trajectory_length / step_size steps, which on a hard edge (step size 1e-5) meant hundreds
    of thousands of steps per iteration. Numerical failures are rejected (`SafePotential`).
    """

    def __init__(self, model, *, num_steps: int, **kwargs):
        self._fixed_num_steps = num_steps
        super().__init__(model, num_steps=num_steps, **kwargs)

    @property
    def num_steps(self) -> int:
        return self._fixed_num_steps


def fit(problem: Problem, *, seed: int, num_samples: int, num_warmup: int, num_chains: int,
        target_accept: float, sampler: str, dense_mass: bool, jit: bool, checkpoint: str, progress: bool | None,
        num_leapfrog: int) -> Fit:
    """Run ``num_chains`` HMC chains of ``num_leapfrog`` steps; step size adapted in warm-up."""
    kernel = partial(FixedStepsHMC, num_steps=num_leapfrog, target_accept_prob=target_accept, full_mass=dense_mass,
                     jit_compile=jit, ignore_jit_warnings=True)
    transition = partial(batched.hmc_transition, num_leapfrog=num_leapfrog)
    return run_sampler(problem, kernel, transition, sampler=sampler, seed=seed, num_samples=num_samples,
                       num_warmup=num_warmup, num_chains=num_chains, target_accept=target_accept,
                       dense_mass=dense_mass, checkpoint=checkpoint, progress=progress,
                       settings={"kernel": "hmc", "target_accept": target_accept, "jit": jit,
                                 "num_leapfrog": num_leapfrog})


BACKEND = Backend(
    name="hmc",
    fit=fit,
    options={**MCMC_OPTIONS, "num_leapfrog": 10},
    choices=MCMC_CHOICES,
    summary="Hamiltonian Monte Carlo, fixed number of leapfrog steps, several chains",
    applicable=needs_continuous,
)

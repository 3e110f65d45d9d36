"""Shared driver of the ``nuts`` and ``hmc`` back-ends (Pyro's MCMC).

Each chain starts from the best of 200 prior draws of its own (`inference.common.init_values`).
Chains run one after another in this process, each with its own seed derived from the run's
seed: on a 2-core machine Pyro would run them sequentially anyway (it counts cpu_count() - 1
usable CPUs), and separate runs keep each chain reproducible on its own.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyro
from pyro.infer import MCMC
from pyro.infer.autoguide.initialization import init_to_value

from inference.common import chain_seeds, init_values, seed_all
from zoo.problem import Problem
from zoo.spec import Fit


class SafePotential:
    """Mixin for Pyro's HMC kernels: a potential that fails numerically (a Cholesky factor of
    an overflowing precision matrix) returns NaN, which the sampler rejects as a divergence.

    Pyro catches such errors itself but then leaves ``requires_grad`` set on the position and
    the next leapfrog step crashes ("you can only change requires_grad flags of leaf
    variables"), as seen with HMC on ``mvn_wishart``.
    """

    def _initialize_model_properties(self, model_args, model_kwargs):
        super()._initialize_model_properties(model_args, model_kwargs)
        potential = self.potential_fn

        def safe(z):
            try:
                return potential(z)
            except (RuntimeError, ValueError):
                return sum((v * 0).sum() for v in z.values()) + float("nan")

        self.potential_fn = safe


def continuous_only(problem: Problem) -> str | None:
    """Reason a gradient-based back-end cannot run: discrete latent sites."""
    if problem.discrete_sites:
        return (f"latent sites {list(problem.discrete_sites)} are discrete; gradient-based "
                "back-ends need them marginalised (enumeration)")
    return None


def run_chains(problem: Problem, make_kernel, *, seed: int, num_samples: int, num_warmup: int,
               num_chains: int, progress: bool | None) -> Fit:
    """Run ``num_chains`` chains of the kernel ``make_kernel(model)`` one after another."""
    draws: dict[str, list[np.ndarray]] = {k: [] for k in problem.latent_sites}
    diverging, accept = [], []
    for chain_seed in chain_seeds(seed, num_chains):
        init = init_to_value(values=init_values(problem, chain_seed))
        seed_all(chain_seed)
        kernel = make_kernel(problem.model, init_strategy=init, max_plate_nesting=problem.max_plate_nesting)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, num_chains=1,
                    disable_progbar=not progress)
        with pyro.validation_enabled(False):
            mcmc.run()
        samples = mcmc.get_samples()
        for k in problem.latent_sites:
            draws[k].append(samples[k].detach().reshape((num_samples,) + problem.sites[k].shape).numpy())
        div = np.zeros(num_samples, dtype=bool)
        div[[int(i) for i in mcmc.diagnostics()["divergences"]["chain 0"]]] = True
        diverging.append(div)
        accept.append(float(mcmc.diagnostics()["acceptance rate"]["chain 0"]))
    diverging = np.stack(diverging)
    return Fit(
        posterior={k: np.stack(v) for k, v in draws.items()},
        sample_stats={"diverging": diverging},
        diagnostics={"divergences": int(diverging.sum()), "acceptance_rate": accept,
                     "chains": f"{num_chains} chains run sequentially in one process"},
    )


MCMC_OPTIONS: dict[str, Any] = {"num_samples": 500, "num_warmup": 500, "num_chains": 4,
                                "target_accept": 0.8, "jit": False, "progress": None}

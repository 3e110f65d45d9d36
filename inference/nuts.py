"""Back-end ``nuts``: Pyro's No-U-Turn sampler (adaptive step size and diagonal mass matrix)."""
from __future__ import annotations

from functools import partial

from pyro.infer import NUTS

from inference.mcmc import MCMC_OPTIONS, SafePotential, needs_continuous, run_chains
from zoo.problem import Problem
from zoo.spec import Backend, Fit


class SafeNUTS(SafePotential, NUTS):
    """Pyro's NUTS with numerical failures of the potential rejected (see `SafePotential`)."""


def fit(problem: Problem, *, seed: int, num_samples: int, num_warmup: int, num_chains: int,
        target_accept: float, jit: bool, checkpoint: str, progress: bool | None) -> Fit:
    """Run ``num_chains`` NUTS chains of ``num_warmup`` + ``num_samples`` iterations."""
    kernel = partial(SafeNUTS, target_accept_prob=target_accept, jit_compile=jit, ignore_jit_warnings=True)
    return run_chains(problem, kernel, seed=seed, num_samples=num_samples, num_warmup=num_warmup,
                      num_chains=num_chains, progress=progress, checkpoint=checkpoint,
                      settings={"kernel": "nuts", "target_accept": target_accept, "jit": jit})


BACKEND = Backend(
    name="nuts",
    fit=fit,
    options=MCMC_OPTIONS,
    summary="No-U-Turn Hamiltonian Monte Carlo, several chains",
    applicable=needs_continuous,
)

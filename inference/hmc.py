"""Back-end ``hmc``: Hamiltonian Monte Carlo with a fixed number of leapfrog steps.

The step size adapts during warm-up; the number of leapfrog steps per iteration is fixed
(``num_leapfrog``) rather than the trajectory length, so that a posterior with a hard edge
(``uniform_pareto``), where the adapted step size collapses, costs a bounded time per
iteration instead of tens of thousands of steps. Batched over chains (`inference.batched`,
with the step size jittered by 20% per iteration) where the model allows, Pyro's HMC kernel
otherwise (option ``sampler``, see `inference.mcmc`, whose factory builds it).
"""
from __future__ import annotations

from zoo.inference.mcmc import backend

BACKEND = backend("hmc")

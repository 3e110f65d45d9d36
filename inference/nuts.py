"""Back-end ``nuts``: the No-U-Turn sampler (adaptive step size and mass matrix).

Batched over chains (`inference.batched`) where the model allows, Pyro's NUTS kernel
otherwise (option ``sampler``, see `inference.mcmc`, whose factory builds it).
"""
from __future__ import annotations

from zoo.inference.mcmc import backend

BACKEND = backend("nuts")

"""GARCH(1, 1) volatility model (posteriordb ``garch-garch11``).

A series of T = 200 returns simulated from a GARCH(1, 1) process: a constant mean and a
conditional variance that follows the last squared deviation and the last variance. The
Stan model gives every parameter its default flat prior on its constrained range:
``mu`` on the real line, ``alpha0 > 0``, ``alpha1`` in (0, 1) and ``beta1`` in
(0, 1 - alpha1). The last bound depends on ``alpha1``, which Pyro's samplers cannot follow
(they fix each site's support transform once). The pair is therefore a point of the
triangle alpha1 > 0, beta1 > 0, alpha1 + beta1 < 1, i.e. the first two coordinates of
``w = (alpha1, beta1, 1 - alpha1 - beta1)`` on the 3-simplex. A flat density on the
triangle is Dirichlet(1, 1, 1) (constant density 2), so ``w ~ Dirichlet(1, 1, 1)`` is
exactly Stan's prior; ``alpha1`` and ``beta1`` are deterministic sites. The recursion runs
over the observed series, so ``y`` is required (the model does not simulate series).

Generative story::

    mu     ~ flat on the real line (improper)
    alpha0 ~ flat on (0, inf) (improper)
    (alpha1, beta1, 1 - alpha1 - beta1) ~ Dirichlet(1, 1, 1)    (flat on alpha1 + beta1 < 1)
    sigma_1 = sigma1 (given)
    sigma_t = sqrt(alpha0 + alpha1 (y_{t-1} - mu)^2 + beta1 sigma_{t-1}^2)    t = 2..T
    y_t ~ Normal(mu, sigma_t)                                                  t = 1..T

Provenance: posteriordb posterior ``garch-garch11`` (model ``garch11``, data ``garch``),
snapshot commit 28f8d3d6e975315f42aa274a8399f21e07a43b30 of
https://github.com/stan-dev/posteriordb (BSD-3-Clause); data and reference summaries by
``benchmarks/posteriordb_references.py`` (``w`` from the draws of alpha1 and beta1).
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

NAME = "garch11"
POSTERIOR = "garch-garch11"
KIND = "time series"

# svi: mean-field misses the sds of the correlated recursion's parameters (ratios down to 0.51);
# full-rank is closer on every scalar (|z| 0.04, sd ratios 0.88-0.99, 2800 steps from the
# Laplace start), one sd ratio just short of the 0.9 yardstick (2026-11-29)
SVI_OPTIONS = {"guide": "full_rank"}


def model(sigma1, y=None):
    if y is None:
        raise ValueError("garch11 runs its recursion over the observed series: y must be given")
    # flat priors (Stan's default): masked, so they add nothing to the density
    mu = pyro.sample("mu", dist.Normal(0., 1.).mask(False))
    alpha0 = pyro.sample("alpha0", dist.HalfNormal(1.).mask(False))
    w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))  # flat on alpha1 + beta1 < 1
    alpha1 = pyro.deterministic("alpha1", w[0])
    beta1 = pyro.deterministic("beta1", w[1])
    # the variance recursion sigma_t^2 = c_t + beta1 sigma_{t-1}^2 as a Python loop, with
    # c_t = alpha0 + alpha1 (y_{t-1} - mu)^2 vectorised
    c = alpha0 + alpha1 * (y[:-1] - mu) ** 2
    var = [torch.as_tensor(sigma1, dtype=y.dtype) ** 2]
    for c_t in c.unbind(0):
        var.append(c_t + beta1 * var[-1])
    with pyro.plate("time", len(y)):
        pyro.sample("y", dist.Normal(mu, torch.stack(var).sqrt()), obs=y)


def data() -> dict:
    """``sigma1`` = 0.5 (float) and ``y`` (200,) float64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {"sigma1": float(d["sigma1"]), "y": np.asarray(d["y"], dtype=np.float64)}

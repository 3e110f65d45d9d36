"""Gaussian-process regression with an exponentiated-quadratic kernel (posteriordb ``gp_pois_regr-gp_regr``).

N = 11 noisy values at x = -10, -8, ..., 10 with the GP's function values integrated out:
y is multivariate normal with the kernel's covariance plus noise. In the Stan model the
term added to the diagonal is ``sigma`` itself, not ``sigma^2``: ``sigma`` is the noise
*variance* despite its name, and it is kept so here.

Generative story::

    rho   ~ Gamma(25, 4)            (shape, rate)
    alpha ~ HalfNormal(2)
    sigma ~ HalfNormal(1)
    K_ij = alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) + sigma [i = j]
    y ~ MultivariateNormal(0, K)

Provenance: posteriordb posterior ``gp_pois_regr-gp_regr`` (model ``gp_regr``, data
``gp_pois_regr``), snapshot commit 28f8d3d6e975315f42aa274a8399f21e07a43b30 of
https://github.com/stan-dev/posteriordb (BSD-3-Clause); data and reference summaries by
``benchmarks/posteriordb_references.py``.
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

NAME = "gp_regr"
POSTERIOR = "gp_pois_regr-gp_regr"
KIND = "gaussian process"


def model(x, y=None):
    N = len(x)
    rho = pyro.sample("rho", dist.Gamma(25., 4.))
    alpha = pyro.sample("alpha", dist.HalfNormal(2.))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.))
    K = alpha ** 2 * torch.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / rho ** 2)
    K = K + sigma * torch.eye(N)  # sigma, not sigma^2, as in the Stan model
    pyro.sample("y", dist.MultivariateNormal(torch.zeros(N), covariance_matrix=K), obs=y)


def data() -> dict:
    """``x`` and ``y`` (11,) float64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {k: np.asarray(d[k], dtype=np.float64) for k in ("x", "y")}

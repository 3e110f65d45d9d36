"""Latent Gaussian process with Poisson counts (posteriordb ``gp_pois_regr-gp_pois_regr``).

N = 11 counts at x = -10, -8, ..., 10 whose log-rates are a GP with an exponentiated-
quadratic kernel. The latent function is non-centred: ``f = L f_tilde`` with ``L`` the
Cholesky factor of the kernel matrix (plus 1e-10 on the diagonal, as in Stan) and
standard-normal ``f_tilde``; ``f`` is a Stan transformed parameter and a deterministic
site. The 1e-10 jitter assumes double precision: run in float64.

Generative story::

    rho   ~ Gamma(25, 4)            (shape, rate)
    alpha ~ HalfNormal(2)
    f_tilde_n ~ Normal(0, 1)        n = 1..N
    K_ij = alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) + 1e-10 [i = j];  L = cholesky(K)
    f = L f_tilde                   (deterministic)
    k_n ~ Poisson(exp(f_n))

Provenance: posteriordb posterior ``gp_pois_regr-gp_pois_regr`` (model ``gp_pois_regr``,
data ``gp_pois_regr``), snapshot commit 28f8d3d6e975315f42aa274a8399f21e07a43b30 of
https://github.com/stan-dev/posteriordb (BSD-3-Clause). The reference draws store ``f``;
the summaries of ``f_tilde`` are computed from them as ``L^-1 f`` draw by draw by
``benchmarks/posteriordb_references.py``.
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

NAME = "gp_pois_regr"
POSTERIOR = "gp_pois_regr-gp_pois_regr"
KIND = "gaussian process"

# f_tilde is strongly correlated a posteriori with rho, alpha and its neighbours: with a
# diagonal mass matrix a 500 + 500 draw NUTS run took over 400 s, with a dense one 124 s.
# At target_accept 0.8 the batched sampler diverges 13 times in 4 x 500 draws (seed 0); at 0.95
# none, but bulk ESS 222 and r_hat 1.017 in 4 x 500: 1000 draws per chain (2026-11-29)
NUTS_OPTIONS = {"dense_mass": True, "target_accept": 0.95, "num_samples": 1000}
# svi: the latent GP's values are correlated with each other and with rho and alpha. A mean-field
# guide stops at the step cap (|z| 0.46, sd ratios down to 0.05); a full-rank one, from the
# Laplace start, converges with the means (|z| 0.22) but not the sds (down to 0.42): a Gaussian's
# limit here (2026-11-29)
SVI_OPTIONS = {"guide": "full_rank"}


def model(x, k=None):
    N = len(x)
    rho = pyro.sample("rho", dist.Gamma(25., 4.))
    alpha = pyro.sample("alpha", dist.HalfNormal(2.))
    f_tilde = pyro.sample("f_tilde", dist.Normal(0., 1.).expand([N]).to_event(1))
    K = alpha ** 2 * torch.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / rho ** 2) + 1e-10 * torch.eye(N)
    f = pyro.deterministic("f", torch.linalg.cholesky(K) @ f_tilde)
    with pyro.plate("data", N):
        pyro.sample("k", dist.Poisson(f.exp()), obs=k)


def data() -> dict:
    """``x`` (11,) float64 and the counts ``k`` (11,) int64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {"x": np.asarray(d["x"], dtype=np.float64), "k": np.asarray(d["k"], dtype=np.int64)}

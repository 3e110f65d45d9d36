"""Autoregressive model of order K = 5 (posteriordb ``arK-arK``).

A series of T = 200 values simulated from an AR(5) process, fitted with an intercept, five
lag coefficients and a noise scale. Like the Stan model, the likelihood conditions on the
first K values: only y_{K+1}..y_T are modelled, so ``y`` is required (the model does not
simulate series).

Generative story::

    alpha  ~ Normal(0, 10)
    beta_k ~ Normal(0, 10)                 k = 1..K
    sigma  ~ HalfCauchy(2.5)
    y_t ~ Normal(alpha + sum_k beta_k y_{t-k}, sigma)     t = K+1..T, y_1..y_K given

Provenance: posteriordb posterior ``arK-arK`` (model ``arK``, data ``arK``), snapshot
commit 28f8d3d6e975315f42aa274a8399f21e07a43b30 of https://github.com/stan-dev/posteriordb
(BSD-3-Clause); data and reference summaries by ``benchmarks/posteriordb_references.py``.
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist

NAME = "arK"
POSTERIOR = "arK-arK"
KIND = "time series"

# svi: the AR coefficients are correlated; a mean-field guide gets the means (|z| 0.07) but not
# the sds (ratios down to 0.24), a full-rank one holds both from the Laplace start (|z| 0.09,
# sd ratios 0.96-1.01, 3000 steps; from the best prior draw it reached the step cap, sd 0.88)
# (2026-11-29)
SVI_OPTIONS = {"guide": "full_rank", "jit": True}


def model(K, y=None):
    if y is None:
        raise ValueError("arK conditions on the first K observations: y must be given")
    T = len(y)
    alpha = pyro.sample("alpha", dist.Normal(0., 10.))
    beta = pyro.sample("beta", dist.Normal(0., 10.).expand([K]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    mu = alpha
    for k in range(K):  # lag k + 1: y[t - k - 1] for t = K..T-1
        mu = mu + beta[k] * y[K - k - 1:T - k - 1]
    with pyro.plate("time", T - K):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y[K:])


def data() -> dict:
    """``K`` = 5 (int) and ``y`` (200,) float64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {"K": int(d["K"]), "y": np.asarray(d["y"], dtype=np.float64)}

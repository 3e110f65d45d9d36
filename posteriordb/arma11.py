"""ARMA(1, 1) time series (posteriordb ``arma-arma11``).

A series of T = 200 values simulated from an ARMA(1, 1) process. The one-step prediction
``nu_t`` uses the previous value and the previous prediction error; as in the Stan model
the recursion starts from y_0 = mu and err_0 = 0. The prediction errors are a triangular
map of ``y`` with unit diagonal, so "err ~ Normal(0, sigma)" is the same density as
"y_t ~ Normal(nu_t, sigma)". The recursion runs over the observed series, so ``y`` is
required (the model does not simulate series).

Generative story::

    mu    ~ Normal(0, 10)
    phi   ~ Normal(0, 2)
    theta ~ Normal(0, 2)
    sigma ~ HalfCauchy(2.5)
    nu_1 = mu + phi * mu;                      err_1 = y_1 - nu_1
    nu_t = mu + phi * y_{t-1} + theta * err_{t-1};  err_t = y_t - nu_t     t = 2..T
    y_t ~ Normal(nu_t, sigma)                  t = 1..T

Provenance: posteriordb posterior ``arma-arma11`` (model ``arma11``, data ``arma``),
snapshot commit 28f8d3d6e975315f42aa274a8399f21e07a43b30 of
https://github.com/stan-dev/posteriordb (BSD-3-Clause); data and reference summaries by
``benchmarks/posteriordb_references.py``.
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

NAME = "arma11"
POSTERIOR = "arma-arma11"
KIND = "time series"

# Stan's rule starts theta uniform(-2, 2); from |theta| > 1 the error recursion grows like
# theta^T (1.5^200 = 1e35), the log density is finite but its gradient astronomical, the
# step size collapses (to 1e-40) and the chain never moves (seed 0: two of four chains stuck,
# r_hat 4.3). Starting in (-0.5, 0.5) (Stan's init=0.5) keeps every chain invertible.
NUTS_OPTIONS = {"init_radius": 0.5}


def model(y=None):
    if y is None:
        raise ValueError("arma11 runs its recursion over the observed series: y must be given")
    mu = pyro.sample("mu", dist.Normal(0., 10.))
    phi = pyro.sample("phi", dist.Normal(0., 2.))
    theta = pyro.sample("theta", dist.Normal(0., 2.))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    # err_t = y_t - nu_t with nu_t = mu + phi y_{t-1} + theta err_{t-1}: the part without
    # err is vectorised, the recursion in err is a Python loop (y_0 = mu, err_0 = 0)
    y_prev = torch.cat([mu.reshape(1), y[:-1]])
    r = y - mu - phi * y_prev
    err = [r[0]]
    for r_t in r[1:].unbind(0):
        err.append(r_t - theta * err[-1])
    nu = y - torch.stack(err)
    with pyro.plate("time", len(y)):
        pyro.sample("y", dist.Normal(nu, sigma), obs=y)


def data() -> dict:
    """``y`` (200,) float64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {"y": np.asarray(d["y"], dtype=np.float64)}

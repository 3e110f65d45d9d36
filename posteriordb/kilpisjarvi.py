"""Linear trend of summer temperatures with a shifted year axis (posteriordb ``kilpisjarvi_mod-kilpisjarvi``).

Average summer temperature at Kilpisjarvi (Finnish Meteorological Institute, 1952-2013)
regressed on the year. posteriordb's modified data shift the years by 2000 (x = 3952..4013)
without centring them, so the intercept and slope have posterior correlation -0.99999: a
simple model with a very badly conditioned posterior. The priors' constants are data.

Generative story::

    alpha ~ Normal(pmualpha, psalpha)
    beta  ~ Normal(pmubeta, psbeta)
    sigma ~ flat on (0, inf) (improper)
    y_n ~ Normal(alpha + beta x_n, sigma)      n = 1..N (N = 62)

The flat prior on sigma is a masked HalfNormal: support and initial values, no density.

Provenance: posteriordb posterior ``kilpisjarvi_mod-kilpisjarvi`` (model ``kilpisjarvi``,
data ``kilpisjarvi_mod``), snapshot commit 28f8d3d6e975315f42aa274a8399f21e07a43b30 of
https://github.com/stan-dev/posteriordb (BSD-3-Clause); data and reference summaries by
``benchmarks/posteriordb_references.py``.
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist

NAME = "kilpisjarvi"
POSTERIOR = "kilpisjarvi_mod-kilpisjarvi"
KIND = "hard geometry"  # a linear regression with an extremely correlated posterior

# corr(alpha, beta) = -0.99999: the posterior covariance's eigenvalues are 879 and 1.3e-9. A
# dense metric would undo that, but Stan's (and Pyro's) regularisation of the estimated
# covariance, n / (n + 5) Cov + 1e-3 * 5 / (n + 5) I after a window of n draws, adds 1e-5 to 1e-4
# to every eigenvalue: the preconditioned posterior keeps a condition number of 7.7e3 (n = 500)
# to 1.5e5 (n = 25), so nuts runs at step size 0.003-0.01 and tree depth 8-10 (Stan's reference
# run needed max_treedepth 15 and 10000 warm-up draws). A longer warm-up gives a longer last
# window and a better conditioned metric (2026-11-29)
NUTS_OPTIONS = {"dense_mass": True, "num_warmup": 1000}

# corr(alpha, beta) = -0.99999: only a full-rank guide can hold it. From the best prior draw Adam
# crept along the ridge to the step cap 2.0 sd short of the means (a mean-field guide stalled
# there too and looked converged, |z| 2.15); from the Laplace start, in its whitened
# coordinates (zoo.inference.laplace), it converges in 2600 steps, |z| 0.05, sd ratios
# 0.95-0.97 (2026-11-29)
SVI_OPTIONS = {"guide": "full_rank"}


def model(x, pmualpha, psalpha, pmubeta, psbeta, y=None):
    alpha = pyro.sample("alpha", dist.Normal(pmualpha, psalpha))
    beta = pyro.sample("beta", dist.Normal(pmubeta, psbeta))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.).mask(False))  # flat on (0, inf)
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(alpha + beta * x, sigma), obs=y)


def data() -> dict:
    """``x`` (years + 2000) and ``y`` (62,) float64, and the prior constants as Python floats."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    out = {k: np.asarray(d[k], dtype=np.float64) for k in ("x", "y")}
    out.update({k: float(d[k]) for k in ("pmualpha", "psalpha", "pmubeta", "psbeta")})
    return out

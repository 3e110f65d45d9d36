"""Eight schools, centred parametrisation: a funnel (posteriordb ``eight_schools-eight_schools_centered``).

The same posterior as ``eight_schools_noncentered`` written with the school effects as
latent variables drawn around ``mu`` with scale ``tau``. With only eight noisy schools the
posterior of (``tau``, ``theta``) is Neal's funnel: as ``tau`` shrinks the effects are
squeezed together, and samplers with one step size diverge in the neck and under-sample
small ``tau``. posteriordb gives this posterior the reference draws of the non-centred
model (the same distribution over ``theta``, ``mu`` and ``tau``).

Generative story::

    mu  ~ Normal(0, 5)
    tau ~ HalfCauchy(5)
    theta_j ~ Normal(mu, tau)        j = 1..J (J = 8)
    y_j ~ Normal(theta_j, sigma_j)   sigma given

Provenance: posteriordb posterior ``eight_schools-eight_schools_centered`` (model
``eight_schools_centered``, data ``eight_schools``, reference posterior
``eight_schools-eight_schools_noncentered``), snapshot commit
28f8d3d6e975315f42aa274a8399f21e07a43b30 of https://github.com/stan-dev/posteriordb
(BSD-3-Clause); data and reference summaries by ``benchmarks/posteriordb_references.py``.
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist

NAME = "eight_schools_centered"
POSTERIOR = "eight_schools-eight_schools_centered"
KIND = "hard geometry"

# the funnel: at target_accept 0.99 nuts on the model as written still diverges in the neck
# (13 divergences, sd ratio 1.12, 4 x (500 + 500), 2026-11-29). The samplers run on theta
# sampled non-centred instead (Pyro's LocScaleReparam(centered=0): theta = mu + tau *
# theta_decentered, the same posterior), and theta's draws are computed back: the model stays
# the Stan model, the geometry is the non-centred one's. tau's sd (a HalfCauchy tail) needs the
# draws: at 4 x 500 its Monte Carlo error is 11 % of the sd (sd ratio 1.18, seed 0), at
# 4 x 1500 it is 5 % (sd ratio 1.06). The non-centred neck still gives a stray divergence at
# target_accept 0.8 (1 in 6000 draws, seed 0), none at 0.9 (sd ratios 0.97-1.01)
NUTS_OPTIONS = {"noncentered": "theta", "num_samples": 1500, "target_accept": 0.9}
# svi: a Gaussian cannot hold the funnel between tau and theta (mean-field sd ratios down to
# 0.36, full-rank 0.24; |z| 0.35 and 0.19), the family's limit (2026-11-29)


def model(sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0., 5.))
    tau = pyro.sample("tau", dist.HalfCauchy(5.))
    with pyro.plate("schools", len(sigma)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def data() -> dict:
    """``sigma`` and ``y`` (8,) float64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {k: np.asarray(d[k], dtype=np.float64) for k in ("sigma", "y")}

"""Log earnings on standardised height, sex and their interaction (posteriordb ``earnings-logearn_interaction_z``).

The ARM book's (Gelman and Hill, ch. 4) regression of log earnings on height standardised
to mean 0 and sd 1 (``z``), a male indicator and their product. Every parameter has Stan's
default flat prior: the coefficients on the real line, the noise scale on (0, inf).

Generative story::

    beta_1..4 ~ flat on the real line (improper)
    sigma     ~ flat on (0, inf) (improper)
    z_n = (height_n - mean(height)) / sd(height)          (sd with N - 1, as Stan's sd)
    log(earn_n) ~ Normal(beta_1 + beta_2 z_n + beta_3 male_n + beta_4 z_n male_n, sigma)
                                                          n = 1..N (N = 1192)

The Stan model puts the normal on ``log(earn)``; here ``earn`` is observed under a LogNormal,
whose density differs by the data-only term -log(earn), a constant. The flat priors are
masked distributions: they give the support and initial values and add no density.

Provenance: posteriordb posterior ``earnings-logearn_interaction_z`` (model
``logearn_interaction_z``, data ``earnings``), snapshot commit
28f8d3d6e975315f42aa274a8399f21e07a43b30 of https://github.com/stan-dev/posteriordb
(BSD-3-Clause); data and reference summaries by ``benchmarks/posteriordb_references.py``.
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist

NAME = "logearn_interaction_z"
POSTERIOR = "earnings-logearn_interaction_z"
KIND = "linear regression"

# mean-field sds down to 0.49 of the posterior's, full-rank 0.93-0.96 (both |z| near 0.05)
SVI_OPTIONS = {"guide": "full_rank"}


def model(height, male, earn=None):
    z = (height - height.mean()) / height.std()  # torch's std divides by N - 1, like Stan's sd
    # flat priors (Stan's default): masked, so they add nothing to the density
    beta = pyro.sample("beta", dist.Normal(0., 1.).expand([4]).to_event(1).mask(False))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.).mask(False))
    mean = beta[0] + beta[1] * z + beta[2] * male + beta[3] * z * male
    with pyro.plate("data", len(height)):
        pyro.sample("earn", dist.LogNormal(mean, sigma), obs=earn)


def data() -> dict:
    """``height`` (inches), ``male`` (0/1) and ``earn`` (dollars, all > 0), each (1192,) float64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {k: np.asarray(d[k], dtype=np.float64) for k in ("height", "male", "earn")}

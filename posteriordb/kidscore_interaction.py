"""Children's test scores on mother's IQ, high school and their interaction (posteriordb ``kidiq-kidscore_interaction``).

The ARM book's (Gelman and Hill, ch. 3) regression of a child's cognitive test score on
whether the mother completed high school (``mom_hs``, 0/1), her IQ (``mom_iq``) and their
product. The Stan model leaves the four coefficients with Stan's default flat (improper)
prior and gives the noise scale a half-Cauchy(0, 2.5) prior.

Generative story::

    beta_1..4 ~ flat on the real line (improper; no density)
    sigma     ~ HalfCauchy(2.5)
    kid_score_n ~ Normal(beta_1 + beta_2 mom_hs_n + beta_3 mom_iq_n
                         + beta_4 mom_hs_n mom_iq_n, sigma)      n = 1..N (N = 434)

The flat prior is a masked Normal: it supplies initial values and the real support, and
adds nothing to the log density (so the model cannot simulate from its prior).

Provenance: posteriordb posterior ``kidiq-kidscore_interaction`` (model
``kidscore_interaction``, data ``kidiq``), snapshot commit
28f8d3d6e975315f42aa274a8399f21e07a43b30 of https://github.com/stan-dev/posteriordb
(BSD-3-Clause); data and reference summaries by ``benchmarks/posteriordb_references.py``.
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist

NAME = "kidscore_interaction"
POSTERIOR = "kidiq-kidscore_interaction"
KIND = "linear regression"

# unstandardised covariates (mom_iq near 100) make the coefficients' correlations near -0.99:
# from the best prior draw both Gaussian families stopped at the step cap 1.65-1.8 sd short of
# the means; from the Laplace start, in its whitened coordinates (zoo.inference.laplace), the
# full-rank guide converges in 2300 steps, |z| 0.06, sd ratios 0.96-0.99 (2026-11-29)
SVI_OPTIONS = {"guide": "full_rank", "jit": True}


def model(mom_hs, mom_iq, kid_score=None):
    # Stan's default flat prior on the coefficients: masked, so it adds nothing to the density
    beta = pyro.sample("beta", dist.Normal(0., 1.).expand([4]).to_event(1).mask(False))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    mean = beta[0] + beta[1] * mom_hs + beta[2] * mom_iq + beta[3] * mom_hs * mom_iq
    with pyro.plate("data", len(mom_iq)):
        pyro.sample("kid_score", dist.Normal(mean, sigma), obs=kid_score)


def data() -> dict:
    """``mom_hs``, ``mom_iq`` and ``kid_score``, each (434,) float64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {k: np.asarray(d[k], dtype=np.float64) for k in ("mom_hs", "mom_iq", "kid_score")}

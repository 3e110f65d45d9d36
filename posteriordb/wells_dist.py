"""Logistic regression of switching wells on the distance to the nearest safe well (posteriordb ``wells_data-wells_dist``).

Gelman and Hill (2007, ch. 5): 3020 households in Araihazar, Bangladesh, whose well water
was unsafe (arsenic); ``switched`` says whether the household moved to another well, and
``distance`` is the distance in metres to the nearest known safe well. Stan's model puts no
prior statement on ``beta``: its prior is flat on the real plane, and so it is here.

Generative story::

    beta ~ flat on R^2 (improper)
    switched_n ~ Bernoulli(logit^-1(beta_1 + beta_2 distance_n))     n = 1..N (N = 3020)

The flat prior is a masked Normal: support and initial values, no density. The model cannot
simulate from its prior.

posteriordb has no reference draws for this posterior (nor for any logistic regression):
``reference/wells_dist.json`` summarises a long NumPyro run instead (its ``reference`` field
says ``"numpyro"``, with the versions, settings and command that made it), written by
``benchmarks/numpyro_references.py``.

Provenance: posteriordb posterior ``wells_data-wells_dist`` (model ``wells_dist``, data
``wells_data``), snapshot commit 28f8d3d6e975315f42aa274a8399f21e07a43b30 of
https://github.com/stan-dev/posteriordb (BSD-3-Clause). The data file keeps ``switched``
and ``dist`` (renamed ``distance``: ``dist`` is the usual name of ``pyro.distributions``).
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist

NAME = "wells_dist"
POSTERIOR = "wells_data-wells_dist"
KIND = "logistic regression"

# corr(intercept, slope) strong: mean-field sds 0.60-0.64 of the posterior's, full-rank 0.97-1.02
SVI_OPTIONS = {"guide": "full_rank"}


def model(distance, switched=None):
    # Stan's default flat prior: masked, so it adds nothing to the density
    beta = pyro.sample("beta", dist.Normal(0., 1.).expand([2]).to_event(1).mask(False))
    logits = beta[..., 0] + beta[..., 1] * distance
    with pyro.plate("data", len(distance)):
        pyro.sample("switched", dist.Bernoulli(logits=logits), obs=switched)


def data() -> dict:
    """``distance`` and ``switched`` (0.0 or 1.0), each (3020,) float64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {k: np.asarray(d[k], dtype=np.float64) for k in ("distance", "switched")}

"""Two-component Gaussian mixture with ordered means (posteriordb ``low_dim_gauss_mix-low_dim_gauss_mix``).

N = 1000 draws from a well-separated mixture of two normals, fitted with the component
means declared ``ordered`` (mu_1 < mu_2, which removes label switching), positive scales
and a mixing weight. The means keep their normal(0, 2) priors, restricted to the ordered
half-plane.

Generative story::

    mu = (mu_1, mu_2), mu_1 < mu_2,  density prop. to Normal(mu_1; 0, 2) Normal(mu_2; 0, 2)
    sigma_k ~ HalfNormal(2)                  k = 1, 2
    theta   ~ Beta(5, 5)
    y_n ~ theta Normal(mu_1, sigma_1) + (1 - theta) Normal(mu_2, sigma_2)     n = 1..N

Pyro has the support ``constraints.ordered_vector`` (unconstrained through Stan's own
transform, mu_1 and log(mu_2 - mu_1)); the site's distribution is a masked
``TransformedDistribution`` on that support, which gives initial values and no density,
and the normal(0, 2) prior density is added with ``pyro.factor``. ``y`` is required (the
ordered prior cannot be sampled).

Provenance: posteriordb posterior ``low_dim_gauss_mix-low_dim_gauss_mix`` (model and data
``low_dim_gauss_mix``), snapshot commit 28f8d3d6e975315f42aa274a8399f21e07a43b30 of
https://github.com/stan-dev/posteriordb (BSD-3-Clause); data and reference summaries by
``benchmarks/posteriordb_references.py``.
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import OrderedTransform

NAME = "low_dim_gauss_mix"
POSTERIOR = "low_dim_gauss_mix-low_dim_gauss_mix"
KIND = "mixture"

# the two locations and the weight are correlated a posteriori: a mean-field guide's sds range
# 0.79-1.11 of the posterior's, a full-rank one's 0.92-0.98 (both |z| 0.04-0.05; 2026-11-29)
SVI_OPTIONS = {"guide": "full_rank"}


def model(y=None):
    if y is None:
        raise ValueError("low_dim_gauss_mix: y must be given (the ordered prior on mu cannot be sampled)")
    # ordered[2] mu: a masked distribution on the ordered vectors, then the normal(0, 2) prior
    ordered = dist.TransformedDistribution(dist.Normal(0., 2.).expand([2]).to_event(1), OrderedTransform())
    mu = pyro.sample("mu", ordered.mask(False))
    pyro.factor("mu_prior", dist.Normal(0., 2.).log_prob(mu).sum(-1))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.).expand([2]).to_event(1))
    theta = pyro.sample("theta", dist.Beta(5., 5.))
    mix = dist.MixtureSameFamily(dist.Categorical(probs=torch.stack([theta, 1 - theta], -1)),
                                 dist.Normal(mu, sigma))
    with pyro.plate("data", len(y)):
        pyro.sample("y", mix, obs=y)


def data() -> dict:
    """``y`` (1000,) float64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {"y": np.asarray(d["y"], dtype=np.float64)}

"""Two-state hidden Markov model with Gaussian emissions (posteriordb ``hmm_example-hmm_example``).

N = 100 observations from a two-state HMM whose states emit Normal(mu_k, 1). Each row of
the transition matrix is a simplex with Stan's implicit uniform prior (Dirichlet(1, 1));
the emission means are ``positive_ordered`` (0 < mu_1 < mu_2) with normal(3, 1) and
normal(10, 1) priors. The hidden states are summed out by the forward algorithm, a Python
loop over time like the Stan model's; as there, the first state has no initial
distribution (every state weighs 1, a constant factor K away from a uniform start).

Generative story::

    theta_1, theta_2 ~ Dirichlet(1, 1)           rows of the transition matrix theta
    mu = (mu_1, mu_2), 0 < mu_1 < mu_2,  density prop. to Normal(mu_1; 3, 1) Normal(mu_2; 10, 1)
    z_1 ~ Uniform{1, 2};  z_t | z_{t-1} ~ Categorical(theta_{z_{t-1}})      t = 2..N
    y_t | z_t ~ Normal(mu_{z_t}, 1)                                          t = 1..N

The ordering is built explicitly: ``mu_low = mu_1 > 0`` and ``mu_gap = mu_2 - mu_1 > 0``
are the latent sites (flat, masked HalfNormals for support and initial values) and ``mu``
is deterministic. The map (mu_low, mu_gap) -> (mu_1, mu_2) is a shear with unit Jacobian, so
the density is unchanged, and Pyro's unconstrained coordinates log(mu_low), log(mu_gap)
are Stan's own for ``positive_ordered``. The transition matrix ``theta`` is a Stan
transformed parameter and a deterministic site. The marginal likelihood of ``y`` enters as
``pyro.factor``, so ``y`` is required.

Provenance: posteriordb posterior ``hmm_example-hmm_example`` (model and data
``hmm_example``), snapshot commit 28f8d3d6e975315f42aa274a8399f21e07a43b30 of
https://github.com/stan-dev/posteriordb (BSD-3-Clause); data and reference summaries by
``benchmarks/posteriordb_references.py`` (``mu_low``, ``mu_gap`` and ``theta`` from the
draws of mu, theta1 and theta2).
"""
import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

NAME = "hmm_example"
POSTERIOR = "hmm_example-hmm_example"
KIND = "hidden Markov model"

# svi: the transition rows and the emission means are correlated; a mean-field guide misses
# their sds (sd ratios down to 0.44, |z| 0.08), a full-rank one holds them: from the Laplace
# start it converges in 2600 steps, |z| 0.03, sd ratios 0.94-1.07 (from the best prior draw it
# reached the 10000-step cap, |z| 0.21) (2026-11-29)
SVI_OPTIONS = {"guide": "full_rank"}


def model(y=None):
    if y is None:
        raise ValueError("hmm_example sums the hidden states out of the observed y: y must be given")
    theta1 = pyro.sample("theta1", dist.Dirichlet(torch.ones(2)))
    theta2 = pyro.sample("theta2", dist.Dirichlet(torch.ones(2)))
    theta = pyro.deterministic("theta", torch.stack([theta1, theta2], -2))  # theta[j, k] = p(k | j)
    # positive_ordered[2] mu = (mu_low, mu_low + mu_gap): flat, masked sites, then the priors
    mu_low = pyro.sample("mu_low", dist.HalfNormal(1.).mask(False))
    mu_gap = pyro.sample("mu_gap", dist.HalfNormal(1.).mask(False))
    mu = pyro.deterministic("mu", torch.stack([mu_low, mu_low + mu_gap]))
    pyro.factor("mu_prior", dist.Normal(3., 1.).log_prob(mu[0]) + dist.Normal(10., 1.).log_prob(mu[1]))
    # forward algorithm: log_alpha[k] = log p(y_1..y_t, z_t = k)
    log_theta = theta.log()
    log_obs = dist.Normal(mu, 1.).log_prob(y.unsqueeze(-1))  # (N, K)
    log_alpha = log_obs[0]
    for log_obs_t in log_obs[1:].unbind(0):
        log_alpha = torch.logsumexp(log_alpha.unsqueeze(-1) + log_theta, -2) + log_obs_t
    pyro.factor("y", torch.logsumexp(log_alpha, -1))


def data() -> dict:
    """``y`` (100,) float64."""
    d = json.loads((Path(__file__).parent / "data" / f"{NAME}.json").read_text())["data"]
    return {"y": np.asarray(d["y"], dtype=np.float64)}

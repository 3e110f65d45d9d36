"""Categorical data with a Dirichlet prior on the category probabilities: the apple sizes."""
from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import special, stats
from torch.distributions import constraints

from zoo.core.spec import (
    Backends,
    DataKey,
    ExactPosterior,
    Hyper,
    ModelSpec,
    Reference,
    exact_from_scipy,
)
from zoo.inference.svi import JIT_ELBO


def model(x=None, N=None, alpha=(1.0, 1.0, 1.0)):
    """Labels in K categories with unknown probabilities (seed 004 2.1.3 row 6; 003 七).

    Generative story::

        pi ~ Dirichlet(alpha)            # K probabilities, K = len(alpha)
        x_i | pi ~ Categorical(pi)       # i = 1..N, x_i in {0, ..., K-1}

    The posterior is Dirichlet(alpha + counts), with counts the number of each label; the
    evidence is the Dirichlet-multinomial probability of the sequence (Polya urn). In the
    notes' apples example (003 七) the apples come in K sizes: ``alpha`` are prior counts per
    size and the posterior mean of size k is (alpha_k + m_k) / (N + sum alpha).
    """
    alpha = alpha if torch.is_tensor(alpha) else torch.tensor(alpha)
    pi = pyro.sample("pi", dist.Dirichlet(alpha))
    with pyro.plate("data", N if x is None else x.shape[0]):
        pyro.sample("x", dist.Categorical(probs=pi), obs=x)


def posterior_params(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Dirichlet posterior concentration ``alpha + counts`` given labels ``x``."""
    return alpha + np.bincount(np.asarray(x, dtype=int), minlength=len(alpha))


def exact(data: dict, hyper: dict) -> ExactPosterior:
    """Closed-form Dirichlet posterior and the Dirichlet-multinomial sequence evidence.

    Parameters
    ----------
    data : ``{"x": integer labels in [0, K), shape (N,)}``.
    hyper : ``{"alpha": positive array, shape (K,)}``.
    """
    alpha = np.asarray(hyper["alpha"], dtype=float)
    x = np.asarray(data["x"])
    alpha_n = posterior_params(x, alpha)
    log_evidence = (
        special.gammaln(alpha.sum()) - special.gammaln(alpha_n.sum())
        + float(np.sum(special.gammaln(alpha_n) - special.gammaln(alpha)))
    )
    return exact_from_scipy(
        {"pi": stats.dirichlet(alpha_n)},
        log_evidence=float(log_evidence),
        alpha_n=alpha_n,
    )


SPEC = ModelSpec(
    name="dirichlet_categorical",
    model=model,
    data={"x": DataKey(("N",), dtype="long")},
    latent_sites=("pi",),
    dims={"pi": ("K",)},
    hyper={"alpha": Hyper([1.0, 1.0, 1.0], constraints.positive, size="K")},
    sizes={"N": 100},
    seed_section="004 2.1.3 (conjugate table, row 6: Multinomial likelihood, Dirichlet prior), "
                 "003 七 (apple sizes)",
    reference=Reference(
        exact=exact,
        posterior_hyper=lambda post: {"alpha": post.extra["alpha_n"]},
    ),
    backends=Backends(
        default=("exact",),
        options=JIT_ELBO,
    ),
)

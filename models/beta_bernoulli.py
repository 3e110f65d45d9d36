"""Bernoulli trials with a Beta prior on the success probability: the notes' apples example."""
from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
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


def model(y=None, N=None, alpha=2.0, beta=2.0):
    """Coin flips (good or bad apples) with unknown success probability (seed 000 beta分布;
    004 2.1.3 row 5; 003 七).

    Generative story::

        p ~ Beta(alpha, beta)      # probability of a success (a good apple)
        y_i | p ~ Bernoulli(p)     # i = 1..N, y_i in {0, 1}

    The posterior is Beta(alpha + sum y, beta + N - sum y): ``alpha`` and ``beta`` act as prior
    counts of successes and failures. In the notes' apples example (003 七) the prior
    Beta(50, 50) becomes Beta(58, 52) after 8 good and 2 bad apples, then Beta(67, 53) after 9
    good and 1 bad more: the posterior of one batch is the prior of the next, and the result
    equals the one-shot posterior on all 20 apples. The Beta prior is also what Thompson
    sampling draws from (000).
    """
    p = pyro.sample("p", dist.Beta(alpha, beta))
    with pyro.plate("data", N if y is None else y.shape[0]):
        pyro.sample("y", dist.Bernoulli(p), obs=y)


def posterior_params(y: np.ndarray, alpha: float, beta: float) -> tuple[float, float]:
    """Beta posterior parameters ``(alpha_n, beta_n)`` given 0/1 data ``y``."""
    s, n = float(np.sum(y)), len(y)
    return alpha + s, beta + n - s


def exact(data: dict, hyper: dict) -> ExactPosterior:
    """Closed-form Beta posterior; evidence B(alpha_n, beta_n) / B(alpha, beta).

    Parameters
    ----------
    data : ``{"y": array of 0/1, shape (N,)}``.
    hyper : ``{"alpha": float, "beta": float}``.
    """
    alpha, beta = float(hyper["alpha"]), float(hyper["beta"])
    alpha_n, beta_n = posterior_params(np.asarray(data["y"], dtype=float), alpha, beta)
    log_evidence = special.betaln(alpha_n, beta_n) - special.betaln(alpha, beta)
    return exact_from_scipy(
        {"p": stats.beta(alpha_n, beta_n)},
        log_evidence=float(log_evidence),
        alpha_n=alpha_n,
        beta_n=beta_n,
    )


SPEC = ModelSpec(
    name="beta_bernoulli",
    model=model,
    data={"y": DataKey(("N",), support=constraints.boolean)},
    latent_sites=("p",),
    hyper={
        "alpha": Hyper(2.0, constraints.positive),
        "beta": Hyper(2.0, constraints.positive),
    },
    sizes={"N": 50},
    seed_section="000 beta分布 (Beta prior, Thompson sampling), 004 2.1.3 (conjugate table, "
                 "Bernoulli row), 003 七 (apples: Beta(50,50) -> Beta(58,52) -> Beta(67,53))",
    reference=Reference(
        exact=exact,
        posterior_hyper=lambda post: {"alpha": post.extra["alpha_n"], "beta": post.extra["beta_n"]},
    ),
    backends=Backends(
        default=("exact",),
        options=JIT_ELBO,
    ),
)

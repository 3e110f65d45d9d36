"""Poisson counts with a Gamma prior on the rate."""
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


def model(x=None, N=None, a0=2.0, b0=1.0):
    """Counts with an unknown Poisson rate (seed 004 2.1.3 row 7).

    Generative story::

        lam ~ Gamma(a0, b0)         # rate, shape a0 and rate b0
        x_i | lam ~ Poisson(lam)    # i = 1..N, x_i in {0, 1, 2, ...}

    The posterior is Gamma(a0 + sum x, b0 + N). Integrating ``lam`` out gives a
    negative-binomial-like evidence, exact up to the data's own sum log x_i! term, which is
    included.
    """
    lam = pyro.sample("lam", dist.Gamma(a0, b0))
    with pyro.plate("data", N if x is None else x.shape[0]):
        pyro.sample("x", dist.Poisson(lam), obs=x)


def posterior_params(x: np.ndarray, a0: float, b0: float) -> tuple[float, float]:
    """Gamma posterior ``(a_n, b_n)`` (shape, rate) given counts ``x``."""
    return a0 + float(np.sum(x)), b0 + len(x)


def exact(data: dict, hyper: dict) -> ExactPosterior:
    """Closed-form Gamma posterior of the rate and the exact log evidence.

    Parameters
    ----------
    data : ``{"x": array of non-negative integers, shape (N,)}``.
    hyper : ``{"a0": float, "b0": float}``.
    """
    x = np.asarray(data["x"], dtype=float)
    a0, b0 = float(hyper["a0"]), float(hyper["b0"])
    a_n, b_n = posterior_params(x, a0, b0)
    log_evidence = (
        a0 * np.log(b0) - special.gammaln(a0) + special.gammaln(a_n) - a_n * np.log(b_n)
        - float(np.sum(special.gammaln(x + 1)))
    )
    return exact_from_scipy(
        {"lam": stats.gamma(a_n, scale=1 / b_n)},
        log_evidence=float(log_evidence),
        a_n=a_n,
        b_n=b_n,
    )


SPEC = ModelSpec(
    name="poisson_gamma",
    model=model,
    data={"x": DataKey(("N",), support=constraints.nonnegative_integer)},
    latent_sites=("lam",),
    hyper={
        "a0": Hyper(2.0, constraints.positive),
        "b0": Hyper(1.0, constraints.positive),
    },
    sizes={"N": 50},
    seed_section="004 2.1.3 (conjugate table, row 7: Poisson likelihood, Gamma prior)",
    reference=Reference(
        exact=exact,
        posterior_hyper=lambda post: {"a0": post.extra["a_n"], "b0": post.extra["b_n"]},
    ),
    backends=Backends(
        default=("exact",),
        options=JIT_ELBO,
    ),
)

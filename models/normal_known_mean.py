"""Normal data with known mean and a Gamma prior on the precision."""
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


def model(x=None, N=None, mu=0.0, a0=2.0, b0=2.0):
    """Normal data with known mean and unknown precision (seed 004 2.1.3 row 2).

    Generative story::

        tau ~ Gamma(a0, b0)                # precision, shape a0 and rate b0
        x_i | tau ~ Normal(mu, 1 / tau)    # i = 1..N, mean mu known

    The posterior is Gamma(a0 + N/2, b0 + sum (x - mu)^2 / 2); integrating ``tau`` out makes
    the data jointly Student-t, which gives the exact evidence.
    """
    tau = pyro.sample("tau", dist.Gamma(a0, b0))
    with pyro.plate("data", N if x is None else x.shape[0]):
        pyro.sample("x", dist.Normal(mu, tau.rsqrt()), obs=x)


def posterior_params(x: np.ndarray, mu: float, a0: float, b0: float) -> tuple[float, float]:
    """Gamma posterior ``(a_n, b_n)`` (shape, rate) given data ``x``."""
    return a0 + len(x) / 2, b0 + 0.5 * float(np.sum((x - mu) ** 2))


def exact(data: dict, hyper: dict) -> ExactPosterior:
    """Closed-form Gamma posterior of the precision and the exact log evidence.

    Parameters
    ----------
    data : ``{"x": array, shape (N,)}``.
    hyper : ``{"mu": float, "a0": float, "b0": float}``.
    """
    x = np.asarray(data["x"], dtype=float)
    mu, a0, b0 = (float(hyper[k]) for k in ("mu", "a0", "b0"))
    a_n, b_n = posterior_params(x, mu, a0, b0)
    log_evidence = (
        special.gammaln(a_n) - special.gammaln(a0) + a0 * np.log(b0) - a_n * np.log(b_n)
        - len(x) / 2 * np.log(2 * np.pi)
    )
    return exact_from_scipy(
        {"tau": stats.gamma(a_n, scale=1 / b_n)},
        log_evidence=float(log_evidence),
        a_n=a_n,
        b_n=b_n,
    )


SPEC = ModelSpec(
    name="normal_known_mean",
    model=model,
    data={"x": DataKey(("N",), support=constraints.real)},
    latent_sites=("tau",),
    hyper={
        "mu": Hyper(0.0, constraints.real),
        "a0": Hyper(2.0, constraints.positive),
        "b0": Hyper(2.0, constraints.positive),
    },
    sizes={"N": 30},
    seed_section="004 2.1.3 (conjugate table, row 2: Gaussian likelihood, Gamma prior on the "
                 "precision)",
    reference=Reference(
        exact=exact,
        posterior_hyper=lambda post: {"a0": post.extra["a_n"], "b0": post.extra["b_n"]},
    ),
    backends=Backends(
        default=("exact",),
        options=JIT_ELBO,
    ),
)

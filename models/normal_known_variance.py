"""Normal data with known variance and a Normal prior on the mean."""
from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
from scipy import stats
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


def model(x=None, N=None, mu0=0.0, sigma0=2.0, sigma=1.0):
    """Normal data with unknown mean and known standard deviation (seed 004 2.1.3 row 1).

    Generative story::

        mu ~ Normal(mu0, sigma0^2)       # unknown mean
        x_i | mu ~ Normal(mu, sigma^2)   # i = 1..N, sigma known

    The posterior is Normal with precision 1/sigma0^2 + N/sigma^2 and mean the
    precision-weighted average of ``mu0`` and the data; the evidence is the Normal marginal
    x ~ Normal(mu0 1, sigma^2 I + sigma0^2 1 1^T).
    """
    mu = pyro.sample("mu", dist.Normal(mu0, sigma0))
    with pyro.plate("data", N if x is None else x.shape[0]):
        pyro.sample("x", dist.Normal(mu, sigma), obs=x)


def posterior_params(x: np.ndarray, mu0: float, sigma0: float, sigma: float) -> tuple[float, float]:
    """Normal posterior ``(mu_n, sigma_n)`` (mean and standard deviation) given data ``x``."""
    prec_n = 1 / sigma0**2 + len(x) / sigma**2
    mu_n = (mu0 / sigma0**2 + float(np.sum(x)) / sigma**2) / prec_n
    return mu_n, float(np.sqrt(1 / prec_n))


def exact(data: dict, hyper: dict) -> ExactPosterior:
    """Closed-form Normal posterior and the exact Normal marginal likelihood.

    Parameters
    ----------
    data : ``{"x": array, shape (N,)}``.
    hyper : ``{"mu0": float, "sigma0": float, "sigma": float}``.
    """
    x = np.asarray(data["x"], dtype=float)
    mu0, sigma0, sigma = (float(hyper[k]) for k in ("mu0", "sigma0", "sigma"))
    mu_n, sigma_n = posterior_params(x, mu0, sigma0, sigma)
    n, r = len(x), x - mu0
    s2, v = sigma**2, sigma**2 + len(x) * sigma0**2
    # det(s2 I + sigma0^2 1 1^T) = s2^(n-1) v; Sherman-Morrison for the quadratic form
    quad = (float(np.sum(r**2)) - sigma0**2 * float(np.sum(r)) ** 2 / v) / s2
    log_evidence = -0.5 * (n * np.log(2 * np.pi) + (n - 1) * np.log(s2) + np.log(v) + quad)
    return exact_from_scipy(
        {"mu": stats.norm(mu_n, sigma_n)},
        log_evidence=float(log_evidence),
        mu_n=mu_n,
        sigma_n=sigma_n,
    )


SPEC = ModelSpec(
    name="normal_known_variance",
    model=model,
    data={"x": DataKey(("N",), support=constraints.real)},
    latent_sites=("mu",),
    hyper={
        "mu0": Hyper(0.0, constraints.real),
        "sigma0": Hyper(2.0, constraints.positive),
        "sigma": Hyper(1.0, constraints.positive),
    },
    sizes={"N": 30},
    seed_section="004 2.1.3 (conjugate table, row 1: Gaussian likelihood, Gaussian prior on mu)",
    reference=Reference(
        exact=exact,
        posterior_hyper=lambda post: {"mu0": post.extra["mu_n"], "sigma0": post.extra["sigma_n"]},
    ),
    backends=Backends(
        default=("exact",),
        options=JIT_ELBO,
    ),
)

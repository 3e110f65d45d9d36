"""Uniform data on (0, theta) with a Pareto prior on the upper bound theta."""
from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
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


def model(x=None, N=None, xm=1.0, k=2.0):
    """Uniform data with an unknown upper bound (seed 004 2.1.3 row 8).

    Generative story::

        theta ~ Pareto(xm, k)               # scale xm, shape k: theta >= xm
        x_i | theta ~ Uniform(0, theta)     # i = 1..N

    The posterior is Pareto(max(xm, max x), k + N); the evidence is
    k xm^k / ((k + N) m^(k + N)) with m = max(xm, max x). The support of the likelihood
    depends on ``theta``: a ``theta`` below the largest observation has likelihood zero, so
    the likelihood is built without argument validation and gives log density -inf there
    instead of raising.
    """
    theta = pyro.sample("theta", dist.Pareto(xm, k))
    with pyro.plate("data", N if x is None else x.shape[0]):
        pyro.sample("x", dist.Uniform(torch.zeros_like(theta), theta, validate_args=False), obs=x)


def posterior_params(x: np.ndarray, xm: float, k: float) -> tuple[float, float]:
    """Pareto posterior ``(m, k_n)`` (scale, shape) given data ``x``."""
    return max(xm, float(np.max(x))), k + len(x)


def exact(data: dict, hyper: dict) -> ExactPosterior:
    """Closed-form Pareto posterior of the bound and the exact log evidence.

    The posterior mean exists for k + N > 1 and the sd for k + N > 2 (N >= 3 suffices).

    Parameters
    ----------
    data : ``{"x": array of positive numbers, shape (N,)}``.
    hyper : ``{"xm": float, "k": float}``.
    """
    x = np.asarray(data["x"], dtype=float)
    xm, k = float(hyper["xm"]), float(hyper["k"])
    m, k_n = posterior_params(x, xm, k)
    log_evidence = np.log(k) + k * np.log(xm) - np.log(k_n) - k_n * np.log(m)
    return exact_from_scipy(
        {"theta": stats.pareto(b=k_n, scale=m)},
        log_evidence=float(log_evidence),
        m=m,
        k_n=k_n,
    )


SPEC = ModelSpec(
    name="uniform_pareto",
    model=model,
    data={"x": DataKey(("N",), support=constraints.positive)},
    latent_sites=("theta",),
    hyper={
        "xm": Hyper(1.0, constraints.positive),
        "k": Hyper(2.0, constraints.positive),
    },
    sizes={"N": 30},
    seed_section="004 2.1.3 (conjugate table, row 8: Uniform likelihood, Pareto prior)",
    reference=Reference(
        exact=exact,
    ),
    backends=Backends(
        default=("exact",),
        limits={"svi": "the posterior's support, theta > max(x), depends on the data, and every guide "
                       "puts mass below it, where the likelihood is zero: KL(q || p) and the ELBO are "
                       "infinite (004 2.2.1: q and p must share a support). Use exact, importance "
                       "(prior proposal) or nuts"},
    ),
)

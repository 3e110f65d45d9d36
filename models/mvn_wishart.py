"""Multivariate normal with known mean and unknown precision matrix under a Wishart prior."""
from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import special, stats
from torch.distributions import constraints

import zoo.core.transforms  # noqa: F401  (registers biject_to(positive_definite) for NUTS and SVI)
from zoo.core.errors import ZooError
from zoo.core.spec import Backends, DataKey, ExactPosterior, Hyper, ModelSpec, Reference
from zoo.inference.svi import JIT_ELBO

_MU = (0.0, 0.0)
_W0 = ((1.0, 0.0), (0.0, 1.0))


def _tensor(value, like: torch.Tensor | None) -> torch.Tensor:
    """``value`` as a float tensor, in the dtype of ``like`` when given."""
    if like is not None:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(value, dtype=torch.get_default_dtype())


def model(x=None, N=None, mu=_MU, nu0=5.0, W0=_W0):
    """D-dimensional Gaussian data with known mean and a Wishart prior on the precision
    (seed 004 2.1.3 row 4: multivariate Gaussian likelihood, Sigma^-1, Wishart prior).

    Generative story::

        precision ~ Wishart(nu0, W0)                    # D x D, scale matrix W0, mean nu0 W0
        x_i | precision ~ MVN(mu, precision^-1)         # i = 1..N, mu known (hyper)

    The Wishart is conjugate: with S = sum_i (x_i - mu)(x_i - mu)^T the posterior is
    Wishart(nu0 + N, (W0^-1 + S)^-1), and the evidence is a ratio of Wishart normalisers.
    ``nu0`` must exceed D - 1. The dimension D is the length of ``mu``. Sampling a Wishart
    site with NUTS or an autoguide needs the bijection registered by ``zoo.core.transforms``
    (imported here), which works through the Cholesky factor; the posterior is still over
    ``precision``.
    """
    like = x if isinstance(x, torch.Tensor) else None
    mu = _tensor(mu, like)
    W0 = _tensor(W0, mu)
    nu0 = _tensor(nu0, mu)
    precision = pyro.sample("precision", dist.Wishart(nu0, covariance_matrix=W0))
    with pyro.plate("data", N if x is None else x.shape[0]):
        pyro.sample("x", dist.MultivariateNormal(mu, precision_matrix=precision), obs=x)


def posterior_params(x: np.ndarray, mu: np.ndarray, nu0: float, W0: np.ndarray):
    """Wishart posterior ``(nu_N, W_N)``: ``nu0 + N`` and ``(W0^-1 + S)^-1``."""
    r = np.asarray(x, dtype=float) - np.asarray(mu, dtype=float)
    S = r.T @ r
    W_N = np.linalg.inv(np.linalg.inv(W0) + S)
    return nu0 + len(r), 0.5 * (W_N + W_N.T)


def log_wishart_normaliser(nu: float, W: np.ndarray) -> float:
    """log Z(nu, W) = (nu D / 2) log 2 + (nu / 2) log|W| + log Gamma_D(nu / 2)."""
    D = W.shape[0]
    return float(nu * D / 2 * np.log(2) + nu / 2 * np.linalg.slogdet(W)[1]
                 + special.multigammaln(nu / 2, D))


def exact(data: dict, hyper: dict) -> ExactPosterior:
    """Closed-form Wishart posterior of ``precision`` and the exact log evidence."""
    x = np.asarray(data["x"], dtype=float)
    mu = np.asarray(hyper["mu"], dtype=float)
    nu0 = float(hyper["nu0"])
    W0 = np.asarray(hyper["W0"], dtype=float)
    N, D = x.shape
    nu_N, W_N = posterior_params(x, mu, nu0, W0)
    post = stats.wishart(df=nu_N, scale=W_N)
    d = np.diag(W_N)
    mean = nu_N * W_N
    sd = np.sqrt(nu_N * (W_N ** 2 + np.outer(d, d)))
    log_evidence = (-N * D / 2 * np.log(2 * np.pi)
                    + log_wishart_normaliser(nu_N, W_N) - log_wishart_normaliser(nu0, W0))

    def sample(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        draws = np.asarray(post.rvs(size=n, random_state=rng), dtype=float)
        return {"precision": draws.reshape(n, D, D)}

    def log_prob(v: dict[str, np.ndarray]) -> float:
        return float(post.logpdf(np.asarray(v["precision"], dtype=float).reshape(D, D)))

    return ExactPosterior(
        mean={"precision": mean},
        sd={"precision": sd},
        sample=sample,
        log_prob=log_prob,
        log_evidence=float(log_evidence),
        extra={"nu_N": nu_N, "W_N": W_N},
    )


def check(data: dict, hyper: dict) -> None:
    """``W0`` must be D x D and ``nu0`` above D - 1, with D the length of ``mu``."""
    D = np.asarray(hyper["mu"]).reshape(-1).shape[0]
    W0 = np.asarray(hyper["W0"])
    if W0.shape != (D, D):
        raise ZooError(f"model 'mvn_wishart': hyper 'W0' must be {D} x {D} (D = len(mu)), "
                       f"got shape {W0.shape}")
    if float(hyper["nu0"]) <= D - 1:
        raise ZooError(f"model 'mvn_wishart': hyper 'nu0' must exceed D - 1 = {D - 1}, "
                       f"got {float(hyper['nu0'])}")


SPEC = ModelSpec(
    name="mvn_wishart",
    model=model,
    data={"x": DataKey(("N", "D"), support=constraints.real)},
    latent_sites=("precision",),
    dims={"precision": ("D", "D_col")},
    hyper={
        "mu": Hyper(default=list(_MU), constraint=constraints.real_vector, size="D"),
        "nu0": Hyper(5.0, constraints.positive),
        "W0": Hyper(default=[list(r) for r in _W0], constraint=constraints.positive_definite),
    },
    sizes={"N": 50},
    seed_section="004 2.1.3 row 4 (conjugate table: multivariate Gaussian, Sigma^-1, Wishart)",
    check=check,
    reference=Reference(
        exact=exact,
    ),
    backends=Backends(
        default=("exact",),
        options=JIT_ELBO,
    ),
)

"""Normal with unknown mean and precision under a Normal-Gamma prior, and the notes' CAVI."""
from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
from scipy import special, stats
from torch.distributions import constraints

from zoo.core.spec import (
    Backend,
    Backends,
    DataKey,
    ExactPosterior,
    Fit,
    Hyper,
    ModelSpec,
    Reference,
)
from zoo.inference.svi import JIT_ELBO


def model(x=None, N=None, mu0=0.0, kappa0=1.0, a0=2.0, b0=2.0):
    """Normal data with unknown mean and precision (seed 004 2.1.3 row 3; 2.2.3 mean field).

    Generative story::

        tau ~ Gamma(a0, b0)                       # precision, shape a0 and rate b0
        mu | tau ~ Normal(mu0, 1 / (kappa0 tau))  # mean, prior tied to the precision
        x_i | mu, tau ~ Normal(mu, 1 / tau)       # i = 1..N

    The joint posterior is again Normal-Gamma, and the marginal posterior of ``mu`` is a
    Student-t. ``mu`` and ``tau`` are uncorrelated but dependent: the spread of ``mu`` given
    ``tau`` is 1 / sqrt(kappa_n tau). A mean-field q(mu) q(tau) (the notes' 2.2.3, back-end
    ``cavi``; SVI ``mean_field``) gives ``mu`` one normal width and loses the Student-t's extra
    spread: its sd is sqrt(1 - 1/a_n) of the exact one. A full-rank Gaussian guide cannot
    capture this dependence either (it is not a correlation).
    """
    tau = pyro.sample("tau", dist.Gamma(a0, b0))
    mu = pyro.sample("mu", dist.Normal(mu0, (kappa0 * tau).rsqrt()))
    with pyro.plate("data", N if x is None else x.shape[0]):
        pyro.sample("x", dist.Normal(mu, tau.rsqrt()), obs=x)


def posterior_params(x: np.ndarray, mu0: float, kappa0: float, a0: float, b0: float):
    """Normal-Gamma posterior parameters ``(mu_n, kappa_n, a_n, b_n)`` given data ``x``."""
    n, xbar = len(x), float(np.mean(x))
    kappa_n = kappa0 + n
    mu_n = (kappa0 * mu0 + n * xbar) / kappa_n
    a_n = a0 + n / 2
    b_n = b0 + 0.5 * float(np.sum((x - xbar) ** 2)) + kappa0 * n * (xbar - mu0) ** 2 / (2 * kappa_n)
    return mu_n, kappa_n, a_n, b_n


def exact(data: dict, hyper: dict) -> ExactPosterior:
    """Closed-form Normal-Gamma posterior; ``mu``'s marginal is Student-t with 2 a_n dof."""
    x = data["x"]
    mu0, kappa0, a0, b0 = (float(hyper[k]) for k in ("mu0", "kappa0", "a0", "b0"))
    mu_n, kappa_n, a_n, b_n = posterior_params(x, mu0, kappa0, a0, b0)
    tau_post = stats.gamma(a_n, scale=1 / b_n)
    mu_post = stats.t(2 * a_n, loc=mu_n, scale=np.sqrt(b_n / (a_n * kappa_n)))
    log_evidence = (
        special.gammaln(a_n) - special.gammaln(a0) + a0 * np.log(b0) - a_n * np.log(b_n)
        + 0.5 * np.log(kappa0 / kappa_n) - len(x) / 2 * np.log(2 * np.pi)
    )

    def sample(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        tau = tau_post.rvs(size=n, random_state=rng)
        mu = rng.normal(mu_n, 1 / np.sqrt(kappa_n * tau))
        return {"mu": mu, "tau": tau}

    def log_prob(v: dict[str, np.ndarray]) -> float:
        tau = float(v["tau"])
        return float(tau_post.logpdf(tau) + stats.norm.logpdf(v["mu"], mu_n, 1 / np.sqrt(kappa_n * tau)))

    return ExactPosterior(
        mean={"mu": np.array(mu_post.mean()), "tau": np.array(tau_post.mean())},
        sd={"mu": np.array(mu_post.std()), "tau": np.array(tau_post.std())},
        sample=sample,
        log_prob=log_prob,
        log_evidence=float(log_evidence),
        extra={"mu_n": mu_n, "kappa_n": kappa_n, "a_n": a_n, "b_n": b_n},
        marginal=lambda site, index: {"mu": mu_post, "tau": tau_post}[site],
    )


def cavi(x: np.ndarray, mu0: float, kappa0: float, a0: float, b0: float,
         max_iter: int = 100, tol: float = 1e-10) -> dict:
    """The notes' coordinate-ascent mean field (004 2.2.3, eq 2.17) for q(mu) q(tau).

    q(mu) = Normal(mu_N, 1/lam_N) and q(tau) = Gamma(a_N, b_N); each update is
    log q_j = E_{q_-j} log p(x, mu, tau) + const, repeated until the ELBO stops rising.

    Returns
    -------
    dict with ``mu_N``, ``lam_N``, ``a_N``, ``b_N``, ``elbo_trace`` (one value per sweep).
    """
    n = len(x)
    mu_N = (kappa0 * mu0 + np.sum(x)) / (kappa0 + n)  # fixed point of the mu update
    a_N = a0 + (n + 1) / 2
    e_tau = a0 / b0
    trace: list[float] = []
    for _ in range(max_iter):
        lam_N = (kappa0 + n) * e_tau
        e_sq = np.sum((x - mu_N) ** 2) + n / lam_N + kappa0 * ((mu_N - mu0) ** 2 + 1 / lam_N)
        b_N = b0 + 0.5 * e_sq
        e_tau = a_N / b_N
        e_log_tau = special.digamma(a_N) - np.log(b_N)
        elbo = (
            (n + 1) / 2 * (e_log_tau - np.log(2 * np.pi)) + 0.5 * np.log(kappa0) - e_tau / 2 * e_sq
            + a0 * np.log(b0) - special.gammaln(a0) + (a0 - 1) * e_log_tau - b0 * e_tau
            + 0.5 * np.log(2 * np.pi * np.e / lam_N)
            + a_N - np.log(b_N) + special.gammaln(a_N) + (1 - a_N) * special.digamma(a_N)
        )
        trace.append(float(elbo))
        if len(trace) > 1 and abs(trace[-1] - trace[-2]) < tol:
            break
    lam_N = (kappa0 + n) * e_tau
    return {"mu_N": mu_N, "lam_N": lam_N, "a_N": a_N, "b_N": b_N, "elbo_trace": trace}


def _fit_cavi(problem, *, seed: int, num_samples: int, num_chains: int, max_iter: int,
              tol: float, progress=None) -> Fit:
    h = problem.np_hyper
    q = cavi(problem.np_data["x"], h["mu0"], h["kappa0"], h["a0"], h["b0"], max_iter, tol)
    rng = np.random.default_rng(seed)
    shape = (num_chains, num_samples)
    return Fit(
        posterior={
            "mu": rng.normal(q["mu_N"], 1 / np.sqrt(q["lam_N"]), size=shape),
            "tau": rng.gamma(q["a_N"], 1 / q["b_N"], size=shape),
        },
        diagnostics={"elbo": q["elbo_trace"][-1], "elbo_trace": q["elbo_trace"],
                     "steps": len(q["elbo_trace"])},
        kind="independent",
    )


CAVI = Backend(
    name="cavi",
    fit=_fit_cavi,
    options={"num_samples": 1000, "num_chains": 4, "max_iter": 100, "tol": 1e-10, "progress": None},
    summary="closed-form coordinate-ascent mean field q(mu) q(tau) (notes 004 2.2.3)",
)

SPEC = ModelSpec(
    name="normal_gamma",
    model=model,
    data={"x": DataKey(("N",), support=constraints.real)},
    latent_sites=("mu", "tau"),
    hyper={
        "mu0": Hyper(0.0, constraints.real),
        "kappa0": Hyper(1.0, constraints.positive),
        "a0": Hyper(2.0, constraints.positive),
        "b0": Hyper(2.0, constraints.positive),
    },
    sizes={"N": 20},
    seed_section="004 2.1.3 (conjugate table, row 3), 2.2.3 (mean field approximation)",
    reference=Reference(
        exact=exact,
    ),
    backends=Backends(
        default=("exact",),
        options=JIT_ELBO,
        own={"cavi": CAVI},
    ),
)

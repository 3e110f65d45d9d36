"""Probabilistic PCA (Tipping & Bishop 1999): a linear-Gaussian latent variable model.

The module holds the Pyro model, the closed-form maximum-likelihood solution (the reference
every back-end is scored against, since the full posterior has no closed form), the notes' EM
algorithm as back-end ``em``, and rotation-invariant diagnostics: W is identified only up to
an orthogonal rotation R (W R gives the same marginal covariance W W^T + sigma^2 I), so the
scores compare W W^T and the marginal covariance, and r_hat is reported both on the entries of
W (which a sampler may leave wandering along the rotation) and on those of W W^T (which it
should pin down).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from zoo.core import arviz_io
from zoo.core.errors import ZooError
from zoo.core.spec import Backend, Backends, DataKey, Fit, Hyper, ModelSpec, Scoring
from zoo.inference.svi import JIT_ELBO

LOG_2PI = float(np.log(2 * np.pi))


def model(x=None, N=None, D=None, d=2, s=1.0, mu0=0.0, sigma0=10.0, sigma_scale=1.0):
    """Probabilistic PCA (seed 004 3.3.1, eq 3.4: PCA as a latent variable model).

    Generative story::

        W ~ Normal(0, s^2)             elementwise, shape (D, d): the loading matrix
        mu ~ Normal(mu0, sigma0^2)     elementwise, shape (D,): the mean
        sigma ~ HalfNormal(sigma_scale)  # noise standard deviation, a scalar
        z_n ~ Normal(0, I_d)           # n = 1..N, the low-dimensional code
        x_n | z_n ~ Normal(W z_n + mu, sigma^2 I_D)

    Integrating out z_n gives x_n ~ Normal(mu, W W^T + sigma^2 I_D). The likelihood depends
    on W only through W W^T: W and W R (R any d x d rotation) fit equally well, so the
    posterior of W is a ridge along the rotations, held in place only by the (rotation
    invariant) Normal prior. The maximum-likelihood solution is closed form
    (`ml_solution`); the notes' EM (back-end ``em``) converges to it.
    """
    d = int(d)
    if x is not None:
        N, D = x.shape
    D = int(D)
    W = pyro.sample("W", dist.Normal(torch.zeros(D, d, dtype=torch.float64), s).to_event(2))
    mu = pyro.sample("mu", dist.Normal(mu0 * torch.ones(D, dtype=torch.float64), sigma0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.as_tensor(sigma_scale, dtype=torch.float64)))
    with pyro.plate("data", int(N), dim=-1):
        z = pyro.sample("z", dist.Normal(torch.zeros(d, dtype=torch.float64), 1.0).to_event(1))
        # W: (..., 1, D, d) against z: (..., N, d, 1) -> loc (..., N, D)
        loc = (W @ z.unsqueeze(-1)).squeeze(-1) + mu
        pyro.sample("x", dist.Normal(loc, sigma.unsqueeze(-1)).to_event(1), obs=x)


def gaussian_loglik(x: np.ndarray, mu: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Per-point log density of ``x`` (N, D) under Normal(mu, C), via a Cholesky factor."""
    L = np.linalg.cholesky(C)
    r = np.linalg.solve(L, (x - mu).T)
    return -0.5 * (x.shape[1] * LOG_2PI + np.sum(r**2, axis=0)) - np.sum(np.log(np.diag(L)))


def ml_solution(x: np.ndarray, d: int) -> dict[str, Any]:
    """Closed-form maximum-likelihood PPCA (Tipping & Bishop 1999, eqs 7, 8).

    Parameters
    ----------
    x : data, shape (N, D).
    d : latent dimension, 1 <= d < D.

    Returns
    -------
    dict with ``W`` (D, d) = U_d (Lambda_d - sigma^2 I)^{1/2} (the rotation R = I),
    ``mu`` (D,) = the sample mean, ``sigma`` = sqrt of the mean of the D - d smallest
    eigenvalues of the sample covariance S (divided by N), ``C`` = W W^T + sigma^2 I,
    ``loglik`` = sum_n log Normal(x_n | mu, C) at these values (the maximum), and
    ``eigenvalues`` of S in decreasing order.
    """
    x = np.asarray(x, dtype=float)
    N, D = x.shape
    d = int(d)
    mu = x.mean(axis=0)
    S = (x - mu).T @ (x - mu) / N
    lam, U = np.linalg.eigh(S)
    lam, U = lam[::-1], U[:, ::-1]
    sigma2 = float(lam[d:].mean())
    W = U[:, :d] * np.sqrt(np.maximum(lam[:d] - sigma2, 0.0))
    C = W @ W.T + sigma2 * np.eye(D)
    loglik = float(gaussian_loglik(x, mu, C).sum())
    return {"W": W, "mu": mu, "sigma": float(np.sqrt(sigma2)), "C": C, "loglik": loglik, "eigenvalues": lam}


def z_conditional(x: np.ndarray, W: np.ndarray, mu: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The exact conditional p(z_n | x_n, W, mu, sigma) = Normal(M^{-1} W^T (x_n - mu), sigma^2 M^{-1}),
    M = W^T W + sigma^2 I.

    Returns
    -------
    mean : (N, d) conditional means.
    cov : (d, d) conditional covariance (the same for every point).
    """
    d = W.shape[1]
    M = W.T @ W + sigma**2 * np.eye(d)
    Minv = np.linalg.inv(M)
    return (x - mu) @ W @ Minv.T, sigma**2 * Minv


def em(x: np.ndarray, d: int, *, rng: np.random.Generator, max_iter: int = 2000,
       tol: float = 1e-10) -> dict[str, Any]:
    """The notes' EM for PPCA (004 3.3.1; Tipping & Bishop 1999 eqs 27-29), closed-form steps.

    E step: E[z_n] = M^{-1} W^T (x_n - mu), E[z_n z_n^T] = sigma^2 M^{-1} + E[z_n] E[z_n]^T.
    M step: W = [sum (x_n - mu) E[z_n]^T] [sum E[z_n z_n^T]]^{-1},
    sigma^2 = 1/(N D) sum ||x_n - mu||^2 - 2 E[z_n]^T W^T (x_n - mu) + tr(E[z_n z_n^T] W^T W);
    mu is the sample mean (its maximiser whatever W and sigma). The log-likelihood never
    decreases; iteration stops when it rises by less than ``tol`` per point.

    Returns
    -------
    dict with ``W``, ``mu``, ``sigma`` and ``loglik_trace`` (the log-likelihood after each step,
    starting at the initial values).
    """
    x = np.asarray(x, dtype=float)
    N, D = x.shape
    mu = x.mean(axis=0)
    xc = x - mu
    S = xc.T @ xc / N
    W = rng.normal(size=(D, d)) * np.sqrt(np.trace(S) / D)
    sigma2 = float(np.trace(S) / D)

    def loglik(W: np.ndarray, sigma2: float) -> float:
        C = W @ W.T + sigma2 * np.eye(D)
        _, logdet = np.linalg.slogdet(C)
        return float(-N / 2 * (D * LOG_2PI + logdet + np.trace(np.linalg.solve(C, S))))

    trace = [loglik(W, sigma2)]
    for _ in range(max_iter):
        Minv = np.linalg.inv(W.T @ W + sigma2 * np.eye(d))
        Ez = xc @ W @ Minv  # (N, d)
        sum_Ezz = N * sigma2 * Minv + Ez.T @ Ez
        W = (xc.T @ Ez) @ np.linalg.inv(sum_Ezz)
        sigma2 = float((np.sum(xc**2) - 2 * np.sum(Ez * (xc @ W)) + np.trace(sum_Ezz @ W.T @ W)) / (N * D))
        trace.append(loglik(W, sigma2))
        if trace[-1] - trace[-2] < tol * N:
            break
    return {"W": W, "mu": mu, "sigma": float(np.sqrt(sigma2)), "loglik_trace": trace}


def _fit_em(problem, *, seed: int, num_samples: int, num_chains: int, max_iter: int, tol: float,
            progress=None) -> Fit:
    x = problem.np_data["x"]
    d = int(problem.np_hyper["d"])
    rng = np.random.default_rng(seed)
    est = em(x, d, rng=rng, max_iter=max_iter, tol=tol)
    shape = (num_chains, num_samples)
    mean, cov = z_conditional(x, est["W"], est["mu"], est["sigma"])
    z = mean + rng.normal(size=shape + mean.shape) @ np.linalg.cholesky(cov).T
    trace = est["loglik_trace"]
    return Fit(
        posterior={
            "W": np.broadcast_to(est["W"], shape + est["W"].shape).copy(),
            "mu": np.broadcast_to(est["mu"], shape + est["mu"].shape).copy(),
            "sigma": np.full(shape, est["sigma"]),
            "z": z,
        },
        diagnostics={"loglik": trace[-1], "loglik_trace": trace, "steps": len(trace) - 1},
        kind="point",
    )


EM_BACKEND = Backend(
    name="em",
    fit=_fit_em,
    options={"num_samples": 1000, "num_chains": 4, "max_iter": 2000, "tol": 1e-10, "progress": None},
    quick={"num_samples": 20, "num_chains": 2},
    summary="the notes' EM for PPCA (closed-form E and M steps; maximum likelihood, z from its "
            "exact conditional)",
)


def check(data: dict, hyper: dict) -> None:
    """1 <= d < D and N > d."""
    N, D = np.shape(data["x"])
    d = int(hyper["d"])
    if d < 1 or d >= D:
        raise ZooError(f"model 'ppca': hyperparameter d={d} must satisfy 1 <= d < D, "
                       f"the data dimension (data key x has D={D})")
    if N <= d:
        raise ZooError(f"model 'ppca': data key x has N={N} points, need more than d={d}")


def max_rhat(draws: np.ndarray) -> float:
    """The largest split r_hat over the entries of ``draws`` (chain, draw, ...); NaN when
    undefined (one chain, or constant draws such as a point estimate repeated)."""
    r = arviz_io.rhat_of(draws)
    r = r[np.isfinite(r)]
    return float(r.max()) if r.size else float("nan")


def diagnose(problem, posterior: dict[str, np.ndarray], truth: dict | None) -> dict[str, Any]:
    """Rotation-invariant scores of posterior draws against the closed-form ML solution.

    Returns ``sigma_ml``, ``sigma_rel_error`` (|E sigma - sigma_ML| / sigma_ML),
    ``cov_rel_error`` (||E[W W^T] + E[sigma^2] I - C_ML||_F / ||C_ML||_F),
    ``loglik_gap_per_point`` (ML log-likelihood minus the log-likelihood at mu = E mu,
    C = E[W W^T] + E[sigma^2] I, per point; >= 0), and split r_hat maxima over the entries
    of W (``r_hat_W_max``, large when chains sit at different rotations) and of W W^T
    (``r_hat_WWt_max``, the identified part). r_hat is NaN for one chain.
    """
    x = problem.np_data["x"]
    N, D = x.shape
    ml = ml_solution(x, int(problem.np_hyper["d"]))
    W = np.asarray(posterior["W"], dtype=float)
    sigma = np.asarray(posterior["sigma"], dtype=float)
    WWt = W @ np.swapaxes(W, -1, -2)
    C = WWt.mean(axis=(0, 1)) + np.mean(sigma**2) * np.eye(D)
    mu = np.asarray(posterior["mu"], dtype=float).mean(axis=(0, 1))
    try:
        gap = (ml["loglik"] - float(gaussian_loglik(x, mu, C).sum())) / N
    except np.linalg.LinAlgError:
        gap = float("nan")
    return {
        "sigma_ml": ml["sigma"],
        "sigma_rel_error": float(abs(sigma.mean() - ml["sigma"]) / ml["sigma"]),
        "cov_rel_error": float(np.linalg.norm(C - ml["C"]) / np.linalg.norm(ml["C"])),
        "loglik_gap_per_point": float(gap),
        "r_hat_W_max": max_rhat(W),
        "r_hat_WWt_max": max_rhat(WWt),
    }


SPEC = ModelSpec(
    name="ppca",
    model=model,
    data={"x": DataKey(("N", "D"), support=constraints.real)},
    latent_sites=("W", "mu", "sigma"),
    dims={"W": ("D", "latent_dim"), "mu": ("D",), "z": ("N", "latent_dim")},
    hyper={
        "d": Hyper(2, constraints.positive_integer),
        "s": Hyper(1.0, constraints.positive),
        "mu0": Hyper(0.0, constraints.real),
        "sigma0": Hyper(10.0, constraints.positive),
        "sigma_scale": Hyper(1.0, constraints.positive),
    },
    sizes={"N": 100, "D": 5},
    seed_section="004 3.3.1 (PCA as a latent variable model, eq 3.4; EM)",
    check=check,
    scoring=Scoring(
        diagnose=diagnose,
    ),
    backends=Backends(
        default=("em",),
        options=JIT_ELBO,
        own={"em": EM_BACKEND},
        skip_by_default={
            "nuts": "slow on the N x d codes z: 50 + 50 draws of one chain at N=100, D=5, d=2 took 20 s "
                    "of CPU, so the default 4 x (500 + 500) draws take about 15 minutes on 2 cores; name "
                    "it with fewer draws (num_samples=200, num_warmup=200, num_chains=2)",
            "hmc": "as nuts, and a fixed path length mixes worse along the rotation ridge of W",
        },
    ),
)

"""An unnormalised Gaussian density whose normaliser is learned by noise-contrastive estimation.

The density is written without its normaliser, p0(x; mu, tau) = exp(-tau (x - mu)^2 / 2), and
the log normaliser is a free parameter ``log_z``: p_m(x) = p0(x) / exp(log_z) (notes 004
papers 4.1, eq 8.3). Maximum likelihood cannot learn ``log_z`` (eq 8.4: the likelihood grows
without bound as log_z -> -inf); noise-contrastive estimation (Gutmann & Hyvarinen 2010, eqs
8.5 to 8.11) learns it by logistic regression of data against noise. Here the exact normaliser
is known, 1/2 log(2 pi / tau), so the learned ``log_z`` can be checked against it.

Back-ends: ``nce`` (the notes' estimator, generalised to nu noise draws per data point) and
``mle`` (maximum likelihood with the true normaliser). Both are point estimates repeated over
draws. The generic Bayesian back-ends see the likelihood prod_i p0(x_i) / exp(log_z), which
does not identify ``log_z`` (eq 8.4): its posterior is its prior pushed towards -inf by
N log_z. They run, but are left out of the default comparison for that reason.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import optimize, special
from torch.distributions import constraints

from zoo.core.spec import Backend, Backends, DataKey, Fit, Hyper, ModelSpec, Scoring

LOG_2PI = math.log(2 * math.pi)


class UnnormalizedNormal(dist.TorchDistribution):
    """exp(-tau (x - mu)^2 / 2) / exp(log_z): a Gaussian's kernel with a free log normaliser.

    ``log_prob`` returns the unnormalised log density minus ``log_z``; it integrates to one
    only when log_z = 1/2 log(2 pi / tau). ``sample`` draws from the normalised density
    Normal(mu, 1/sqrt(tau)), which is what data from this family look like whatever log_z is.
    """

    arg_constraints: ClassVar[dict] = {"loc": constraints.real, "tau": constraints.positive, "log_z": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: torch.Tensor, tau: torch.Tensor, log_z: torch.Tensor,
                 validate_args: bool | None = None) -> None:
        self.loc, self.tau, self.log_z = torch.broadcast_tensors(
            torch.as_tensor(loc), torch.as_tensor(tau), torch.as_tensor(log_z))
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + eps * self.tau.rsqrt()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return -0.5 * self.tau * (value - self.loc) ** 2 - self.log_z


def model(x=None, N=None, mu0=0.0, sigma0=3.0, a0=2.0, b0=2.0, log_z_loc=0.0, log_z_scale=10.0):
    """Data from an unnormalised Gaussian kernel with a learned log normaliser (seed 004
    papers 4.1, noise-contrastive estimation, eqs 8.2 and 8.3).

    Generative story::

        mu ~ Normal(mu0, sigma0)                       # location
        tau ~ Gamma(a0, b0)                            # precision (shape a0, rate b0)
        log_z ~ Normal(log_z_loc, log_z_scale)         # the normaliser c of eq 8.3, a parameter
        x_i | mu, tau, log_z has density exp(-tau (x_i - mu)^2 / 2) / exp(log_z)   # i = 1..N

    Only log_z = 1/2 log(2 pi / tau) makes the density integrate to one; simulated data come
    from that normalised density, Normal(mu, 1/sqrt(tau)). ``nce`` estimates (mu, tau, log_z)
    by classifying data against noise; ``mle`` uses the true normaliser.
    """
    mu = pyro.sample("mu", dist.Normal(mu0, sigma0))
    tau = pyro.sample("tau", dist.Gamma(a0, b0))
    log_z = pyro.sample("log_z", dist.Normal(log_z_loc, log_z_scale))
    with pyro.plate("data", N if x is None else x.shape[0]):
        pyro.sample("x", UnnormalizedNormal(mu, tau, log_z), obs=x)


def exact_log_z(tau: Any) -> Any:
    """The true log normaliser of exp(-tau (x - mu)^2 / 2): 1/2 log(2 pi / tau)."""
    return 0.5 * (LOG_2PI - np.log(tau))


def natural_to_params(eta: np.ndarray) -> tuple[float, float, float]:
    """(mu, tau, log_z) from log p_m(u) = eta0 + eta1 u + eta2 u^2 (eta2 < 0)."""
    eta0, eta1, eta2 = (float(e) for e in eta)
    tau = -2.0 * eta2
    mu = eta1 / tau
    return mu, tau, -eta0 - 0.5 * tau * mu**2


def nce_fit(x: np.ndarray, noise: np.ndarray, noise_loc: float, noise_scale: float,
            tol: float = 1e-12) -> dict[str, Any]:
    """Noise-contrastive estimation of (mu, tau, log_z) (notes eqs 8.8 to 8.11).

    With nu = len(noise) / len(x) noise draws per data point, h(u) = sigmoid(G(u) - log nu),
    G(u) = log p_m(u) - log p_n(u), and the objective is the logistic log-likelihood
    J = [sum_t log h(x_t) + sum_s log(1 - h(y_s))] / len(x) (eq 8.11 for nu = 1, up to the
    factor 1/2). log p_m is linear in its natural parameters (1, u, u^2), so J is concave in
    them and L-BFGS finds the unique maximum.

    Parameters
    ----------
    x : data, shape (N,).
    noise : draws from the noise density Normal(noise_loc, noise_scale), shape (nu N,).

    Returns
    -------
    dict with ``mu``, ``tau``, ``log_z``, ``eta`` (natural parameters), ``objective`` (J at
    the optimum), ``iterations`` and ``converged``.
    """
    nu = len(noise) / len(x)
    u = np.concatenate([x, noise])
    label = np.concatenate([np.ones(len(x)), np.zeros(len(noise))])
    sign = 2 * label - 1
    feats = np.stack([np.ones_like(u), u, u**2], axis=1)
    log_pn = -0.5 * ((u - noise_loc) / noise_scale) ** 2 - np.log(noise_scale) - 0.5 * LOG_2PI
    offset = -log_pn - np.log(nu)

    def loss(eta: np.ndarray) -> tuple[float, np.ndarray]:
        logit = feats @ eta + offset
        value = -np.sum(special.log_expit(sign * logit)) / len(x)
        grad = -feats.T @ (sign * special.expit(-sign * logit)) / len(x)
        return value, grad

    # start at the noise density itself: log p_m = log p_n (a valid, normalised Gaussian)
    start = np.array([-0.5 * noise_loc**2 / noise_scale**2 - np.log(noise_scale) - 0.5 * LOG_2PI,
                      noise_loc / noise_scale**2, -0.5 / noise_scale**2])
    res = optimize.minimize(loss, start, jac=True, method="L-BFGS-B",
                            options={"maxiter": 1000, "ftol": tol, "gtol": 1e-10})
    mu, tau, log_z = natural_to_params(res.x)
    return {"mu": mu, "tau": tau, "log_z": log_z, "eta": res.x, "objective": -float(res.fun),
            "iterations": int(res.nit), "converged": bool(res.success) and tau > 0}


def mle_fit(x: np.ndarray) -> dict[str, float]:
    """Maximum likelihood with the true normaliser: mu = mean, tau = 1 / (biased variance),
    log_z = 1/2 log(2 pi / tau) (the normaliser is a function of tau, not a parameter)."""
    mu = float(np.mean(x))
    tau = 1.0 / float(np.mean((x - mu) ** 2))
    return {"mu": mu, "tau": tau, "log_z": float(exact_log_z(tau))}


def _repeat(values: dict[str, float], num_chains: int, num_samples: int) -> dict[str, np.ndarray]:
    return {k: np.full((num_chains, num_samples), float(values[k])) for k in ("mu", "tau", "log_z")}


def _diagnostics(est: dict[str, float], x: np.ndarray) -> dict[str, float]:
    log_z_exact = float(exact_log_z(est["tau"]))
    normalised = -0.5 * est["tau"] * (x - est["mu"]) ** 2 - log_z_exact
    return {"log_z": float(est["log_z"]), "log_z_exact": log_z_exact,
            "log_z_error": float(est["log_z"]) - log_z_exact,
            "loglik_per_point": float(np.mean(normalised))}


def _fit_nce(problem, *, seed: int, num_samples: int, num_chains: int, noise_ratio: int,
             noise_scale: float, progress=None) -> Fit:
    x = problem.np_data["x"]
    rng = np.random.default_rng(seed)
    loc, scale = float(np.mean(x)), noise_scale * float(np.std(x))
    noise = rng.normal(loc, scale, size=noise_ratio * len(x))
    est = nce_fit(x, noise, loc, scale)
    if not est["converged"]:
        raise problem.error(f"NCE did not converge (tau = {est['tau']:.3g}); try another noise_scale")
    return Fit(posterior=_repeat(est, num_chains, num_samples),
               diagnostics={**_diagnostics(est, x), "nce_objective": est["objective"],
                            "steps": est["iterations"], "noise_loc": loc, "noise_sd": scale},
               kind="point")


def _fit_mle(problem, *, seed: int, num_samples: int, num_chains: int, progress=None) -> Fit:
    x = problem.np_data["x"]
    est = mle_fit(x)
    return Fit(posterior=_repeat(est, num_chains, num_samples), diagnostics=_diagnostics(est, x), kind="point")


def diagnose(problem, posterior: dict[str, np.ndarray], truth: dict | None) -> dict[str, Any]:
    """The learned log Z against the exact one at the same tau, and the truth's when known."""
    out: dict[str, Any] = {}
    if {"tau", "log_z"} <= set(posterior):
        tau, log_z = float(np.mean(posterior["tau"])), float(np.mean(posterior["log_z"]))
        out["log_z_error"] = log_z - float(exact_log_z(tau))
        if truth is not None and "tau" in truth:
            out["log_z_error_vs_truth"] = log_z - float(exact_log_z(float(truth["tau"])))
            out["mu_error"] = float(np.mean(posterior["mu"])) - float(truth["mu"])
    return out


NCE = Backend(
    name="nce",
    fit=_fit_nce,
    options={"num_samples": 1000, "num_chains": 4, "noise_ratio": 1, "noise_scale": 1.5,
             "progress": None},
    summary="noise-contrastive estimation of (mu, tau, log_z), a point estimate (notes 004 papers 4.1)",
    quick={"num_samples": 20, "num_chains": 2},
)

MLE = Backend(
    name="mle",
    fit=_fit_mle,
    options={"num_samples": 1000, "num_chains": 4, "progress": None},
    summary="maximum likelihood with the true normaliser, a point estimate",
    quick={"num_samples": 20, "num_chains": 2},
)

_UNIDENTIFIED = ("the likelihood prod p0(x_i) / exp(log_z) does not identify log_z (notes eq 8.4): "
                 "its posterior is the prior pushed towards -inf by N log_z")

SPEC = ModelSpec(
    name="nce_unnormalized",
    model=model,
    data={"x": DataKey(("N",), support=constraints.real)},
    latent_sites=("mu", "tau", "log_z"),
    hyper={
        "mu0": Hyper(0.0, constraints.real),
        "sigma0": Hyper(3.0, constraints.positive),
        "a0": Hyper(2.0, constraints.positive),
        "b0": Hyper(2.0, constraints.positive),
        "log_z_loc": Hyper(0.0, constraints.real),
        "log_z_scale": Hyper(10.0, constraints.positive),
    },
    sizes={"N": 200},
    seed_section="004 papers 4.1 (noise-contrastive estimation, eqs 8.1 to 8.11)",
    scoring=Scoring(
        diagnose=diagnose,
    ),
    backends=Backends(
        default=("nce",),
        own={"nce": NCE, "mle": MLE},
        skip_by_default={b: _UNIDENTIFIED for b in ("nuts", "hmc", "svi", "importance")},
    ),
)

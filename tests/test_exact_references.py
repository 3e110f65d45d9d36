"""The conjugate models' exact posteriors checked against independent computations.

Each closed form (posterior mean and sd, log evidence, joint log density, draws) is compared
with something computed another way: numerical integration of prior x likelihood written with
``scipy.stats`` densities, the sequential (Polya urn) predictive, Bayes' rule at several
points, Monte Carlo on the draws, and the chain rule p(x1, x2) = p(x1) p(x2 | x1) with the
posterior after one batch used as the prior of the next (the notes' apples, 003 七).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from scipy import integrate, stats

# Imported before any model module: importing the ``zoo`` package loads the registry, which
# imports every model.
from zoo.core.spec import ExactPosterior


@dataclass
class Case:
    """One model, one data set and one hyperparameter setting, with scipy-written densities.

    ``log_prior(h, t)`` and ``log_lik(d, h, t)`` are the prior log density of the latent and
    the data log likelihood at a latent value ``t`` (for the 1-D latents, vectorised over an
    array of values ``t``); ``limits(d, h)`` gives the integration
    range ``(lo, hi, points)`` for the 1-D posteriors; ``as_hyper(extra)`` turns a posterior's
    parameters into hyperparameters of the same model (sequential updating).
    """

    model: str
    site: str
    data: Callable[[np.random.Generator], dict[str, np.ndarray]]
    hyper: dict[str, Any]
    log_prior: Callable[[dict, Any], float]
    log_lik: Callable[[dict, dict, Any], float]
    as_hyper: Callable[[dict], dict]
    limits: Callable[[dict, dict], tuple[float, float, list[float]]] | None = None

    def exact(self, data: dict, hyper: dict | None = None) -> ExactPosterior:
        spec = importlib.import_module(f"models.{self.model}").SPEC
        post = spec.reference.exact(data, self.hyper if hyper is None else hyper)
        assert isinstance(post, ExactPosterior)
        return post


def _bernoulli(p_true: float, n: int):
    return lambda rng: {"y": rng.binomial(1, p_true, n).astype(float)}


def _normal(loc: float, scale: float, n: int):
    return lambda rng: {"x": rng.normal(loc, scale, n)}


def _poisson(lam: float, n: int):
    return lambda rng: {"x": rng.poisson(lam, n).astype(float)}


def _uniform(theta: float, n: int):
    return lambda rng: {"x": rng.uniform(0, theta, n)}


def _categorical(probs: list[float], n: int):
    return lambda rng: {"x": rng.choice(len(probs), size=n, p=probs)}


def _col(t: Any) -> np.ndarray:
    """Latent value(s) as a column, to broadcast against the data along the last axis."""
    return np.asarray(t, dtype=float)[..., None]


def _poisson_top(x: np.ndarray) -> float:
    """An upper limit far beyond the rate's posterior mass (about mean x, sd sqrt(mean/N))."""
    return float(np.mean(x) + 30 * np.sqrt((np.mean(x) + 1) / len(x)) + 5)


def _window(center: float, halfwidth: float, *extra: float):
    lo, hi = center - halfwidth, center + halfwidth
    return lo, hi, [c for c in (center, *extra) if lo < c < hi]


BETA_BERNOULLI = dict(
    model="beta_bernoulli", site="p",
    log_prior=lambda h, t: stats.beta.logpdf(t, h["alpha"], h["beta"]),
    log_lik=lambda d, h, t: stats.bernoulli.logpmf(d["y"], _col(t)).sum(-1),
    as_hyper=lambda e: {"alpha": e["alpha_n"], "beta": e["beta_n"]},
    limits=lambda d, h: (0.0, 1.0, [float(np.mean(d["y"]))]),
)
NORMAL_KNOWN_VARIANCE = dict(
    model="normal_known_variance", site="mu",
    log_prior=lambda h, t: stats.norm.logpdf(t, h["mu0"], h["sigma0"]),
    log_lik=lambda d, h, t: stats.norm.logpdf(d["x"], _col(t), h["sigma"]).sum(-1),
    as_hyper=lambda e: {"mu0": e["mu_n"], "sigma0": e["sigma_n"]},
    limits=lambda d, h: _window(
        float(np.mean(d["x"])),
        30 * h["sigma"] / np.sqrt(len(d["x"])) + abs(np.mean(d["x"]) - h["mu0"]), h["mu0"]),
)
NORMAL_KNOWN_MEAN = dict(
    model="normal_known_mean", site="tau",
    log_prior=lambda h, t: stats.gamma.logpdf(t, h["a0"], scale=1 / h["b0"]),
    log_lik=lambda d, h, t: stats.norm.logpdf(d["x"], h["mu"], 1 / np.sqrt(_col(t))).sum(-1),
    as_hyper=lambda e: {"a0": e["a_n"], "b0": e["b_n"]},
    limits=lambda d, h: (0.0, 30 / np.mean((d["x"] - h["mu"]) ** 2),
                         [1 / np.mean((d["x"] - h["mu"]) ** 2)]),
)
POISSON_GAMMA = dict(
    model="poisson_gamma", site="lam",
    log_prior=lambda h, t: stats.gamma.logpdf(t, h["a0"], scale=1 / h["b0"]),
    log_lik=lambda d, h, t: stats.poisson.logpmf(d["x"], _col(t)).sum(-1),
    as_hyper=lambda e: {"a0": e["a_n"], "b0": e["b_n"]},
    limits=lambda d, h: (0.0, _poisson_top(d["x"]), [float(np.mean(d["x"]))]),
)
UNIFORM_PARETO = dict(
    model="uniform_pareto", site="theta",
    log_prior=lambda h, t: stats.pareto.logpdf(t, h["k"], scale=h["xm"]),
    log_lik=lambda d, h, t: stats.uniform.logpdf(d["x"], 0, _col(t)).sum(-1),
    as_hyper=lambda e: {"xm": e["m"], "k": e["k_n"]},
    # the likelihood is zero below max x: start at the prior's lower end and break there
    limits=lambda d, h: (h["xm"], 10 * (h["xm"] + np.max(d["x"])),
                         [float(np.max(d["x"]))] if np.max(d["x"]) > h["xm"] else []),
)
DIRICHLET_CATEGORICAL = dict(
    model="dirichlet_categorical", site="pi",
    log_prior=lambda h, t: stats.dirichlet(h["alpha"]).logpdf(t),
    log_lik=lambda d, h, t: np.log(np.asarray(t)[d["x"]]).sum(),
    as_hyper=lambda e: {"alpha": e["alpha_n"]},
)

ONE_D_CASES = [
    Case(data=_bernoulli(0.3, 40), hyper={"alpha": 2.0, "beta": 3.0}, **BETA_BERNOULLI),
    Case(data=_bernoulli(0.8, 20), hyper={"alpha": 50.0, "beta": 50.0}, **BETA_BERNOULLI),
    Case(data=_bernoulli(0.5, 12), hyper={"alpha": 0.5, "beta": 0.5}, **BETA_BERNOULLI),
    Case(data=_normal(1.5, 1.0, 25), hyper={"mu0": 0.0, "sigma0": 2.0, "sigma": 1.0},
         **NORMAL_KNOWN_VARIANCE),
    Case(data=_normal(-3.0, 2.5, 8), hyper={"mu0": 1.0, "sigma0": 0.5, "sigma": 2.5},
         **NORMAL_KNOWN_VARIANCE),
    Case(data=_normal(0.0, 0.5, 30), hyper={"mu": 0.0, "a0": 2.0, "b0": 2.0},
         **NORMAL_KNOWN_MEAN),
    Case(data=_normal(2.0, 3.0, 10), hyper={"mu": 2.5, "a0": 0.7, "b0": 5.0},
         **NORMAL_KNOWN_MEAN),
    Case(data=_poisson(3.0, 40), hyper={"a0": 2.0, "b0": 1.0}, **POISSON_GAMMA),
    Case(data=_poisson(0.4, 15), hyper={"a0": 0.5, "b0": 0.2}, **POISSON_GAMMA),
    Case(data=_uniform(2.0, 20), hyper={"xm": 1.0, "k": 2.0}, **UNIFORM_PARETO),
    Case(data=_uniform(2.5, 10), hyper={"xm": 3.0, "k": 1.5}, **UNIFORM_PARETO),
]
DIRICHLET_CASES = [
    Case(data=_categorical([0.2, 0.5, 0.3], 60), hyper={"alpha": np.array([1.0, 1.0, 1.0])},
         **DIRICHLET_CATEGORICAL),
    Case(data=_categorical([0.1, 0.1, 0.05, 0.75], 25),
         hyper={"alpha": np.array([0.5, 2.0, 1.0, 3.0])}, **DIRICHLET_CATEGORICAL),
]
ALL_CASES = ONE_D_CASES + DIRICHLET_CASES


def _case_id(c: Case) -> str:
    return f"{c.model}-" + "-".join(f"{k}={np.round(v, 2).tolist()}" for k, v in c.hyper.items())


def _draw(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    return case.data(np.random.default_rng(seed))


def _quad_moments(case: Case, data: dict) -> tuple[float, float, float]:
    """Posterior mean, sd and log evidence by quadrature of prior x likelihood."""
    lo, hi, points = case.limits(data, case.hyper)

    def log_joint(t: Any) -> Any:
        return case.log_prior(case.hyper, t) + case.log_lik(data, case.hyper, t)

    grid = np.linspace(lo, hi, 4003)[1:-1]
    ref = float(np.max(log_joint(grid)))  # keeps exp() in range; added back below

    def integral(f: Callable[[float], float]) -> float:
        val, _ = integrate.quad(lambda t: f(t) * np.exp(log_joint(t) - ref), lo, hi,
                                points=points or None, epsabs=0.0, epsrel=1e-12, limit=500)
        return val

    z = integral(lambda t: 1.0)
    mean = integral(lambda t: t) / z
    var = integral(lambda t: (t - mean) ** 2) / z
    return mean, float(np.sqrt(var)), float(np.log(z) + ref)


@pytest.mark.parametrize("case", ONE_D_CASES, ids=_case_id)
def test_moments_and_evidence_match_quadrature(case: Case) -> None:
    data = _draw(case)
    post = case.exact(data)
    mean, sd, log_z = _quad_moments(case, data)
    assert float(post.mean[case.site]) == pytest.approx(mean, rel=1e-6)
    assert float(post.sd[case.site]) == pytest.approx(sd, rel=1e-6)
    assert post.log_evidence == pytest.approx(log_z, rel=0, abs=1e-6)


@pytest.mark.parametrize("case", DIRICHLET_CASES, ids=_case_id)
def test_dirichlet_matches_polya_urn_and_beta_marginals(case: Case) -> None:
    data = _draw(case)
    x, alpha = data["x"], case.hyper["alpha"]
    post = case.exact(data)
    # evidence: the sequence's probability one draw at a time from the urn
    seen = np.zeros_like(alpha)
    log_z = 0.0
    for i, xi in enumerate(x):
        log_z += np.log((alpha[xi] + seen[xi]) / (alpha.sum() + i))
        seen[xi] += 1
    assert post.log_evidence == pytest.approx(log_z, rel=0, abs=1e-9)
    # each pi_k is Beta(alpha_k + n_k, rest) a posteriori
    n_k = np.array([np.sum(x == k) for k in range(len(alpha))])
    rest = alpha.sum() + len(x) - alpha - n_k
    marg = stats.beta(alpha + n_k, rest)
    np.testing.assert_allclose(post.mean["pi"], marg.mean(), rtol=1e-10)
    np.testing.assert_allclose(post.sd["pi"], marg.std(), rtol=1e-10)


@pytest.mark.parametrize("case", ALL_CASES, ids=_case_id)
def test_draws_agree_with_mean_and_sd(case: Case) -> None:
    data = _draw(case)
    post = case.exact(data)
    n = 20_000
    draws = post.sample(np.random.default_rng(1), n)[case.site]
    mean, sd = np.asarray(post.mean[case.site]), np.asarray(post.sd[case.site])
    assert draws.shape == (n,) + mean.shape
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * sd / np.sqrt(n))
    # sd's standard error from the draws' fourth central moment (delta method)
    dev2 = (draws - draws.mean(0)) ** 2
    se_sd = np.sqrt(dev2.var(0) / n) / (2 * sd)
    assert np.all(np.abs(draws.std(0) - sd) < 5 * se_sd)


@pytest.mark.parametrize("case", ALL_CASES, ids=_case_id)
def test_log_prob_satisfies_bayes_rule(case: Case) -> None:
    data = _draw(case)
    post = case.exact(data)
    points = post.sample(np.random.default_rng(2), 5)[case.site]
    for t in points:
        lhs = case.log_lik(data, case.hyper, t) + case.log_prior(case.hyper, t)
        assert lhs - post.log_prob({case.site: t}) == pytest.approx(
            post.log_evidence, rel=0, abs=1e-8)


@pytest.mark.parametrize("case", ALL_CASES, ids=_case_id)
def test_sequential_update_equals_one_shot(case: Case) -> None:
    """Posterior after batch 1 as the prior for batch 2: same posterior, evidences add."""
    data = _draw(case)
    key = next(iter(data))
    half = len(data[key]) // 2
    first, second = {key: data[key][:half]}, {key: data[key][half:]}
    post1 = case.exact(first)
    post2 = case.exact(second, {**case.hyper, **case.as_hyper(post1.extra)})
    whole = case.exact(data)
    np.testing.assert_allclose(post2.mean[case.site], whole.mean[case.site], rtol=1e-12)
    np.testing.assert_allclose(post2.sd[case.site], whole.sd[case.site], rtol=1e-12)
    assert post1.log_evidence + post2.log_evidence == pytest.approx(
        whole.log_evidence, rel=0, abs=1e-9)


def test_apples_example() -> None:
    """003 七: Beta(50, 50) -> Beta(58, 52) after 8 good of 10 -> Beta(67, 53) after 9 of 10."""
    spec = importlib.import_module("zoo.models.beta_bernoulli").SPEC
    batch1 = np.array([1.0] * 8 + [0.0] * 2)
    batch2 = np.array([1.0] * 9 + [0.0] * 1)
    post1 = spec.reference.exact({"y": batch1}, {"alpha": 50.0, "beta": 50.0})
    assert (post1.extra["alpha_n"], post1.extra["beta_n"]) == (58.0, 52.0)
    assert float(post1.mean["p"]) == pytest.approx(58 / 110)
    post2 = spec.reference.exact({"y": batch2}, {"alpha": 58.0, "beta": 52.0})
    assert (post2.extra["alpha_n"], post2.extra["beta_n"]) == (67.0, 53.0)

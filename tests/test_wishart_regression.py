"""The positive-definite bijection, `mvn_wishart` and `bayesian_linear_regression` against
independent references (autograd Jacobians, scipy densities and draws, scikit-learn Ridge)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.linear_model import Ridge
from torch.distributions import biject_to, constraints

import zoo.core.transforms as zt  # imported first: registers the bijection (and loads the zoo)
from zoo.models import bayesian_linear_regression as blr
from zoo.models import mvn_wishart as mw


# ---------------------------------------------------------------- the bijection
@pytest.mark.parametrize("D", [1, 2, 3])
def test_bijection_round_trip_batched(D):
    t = zt.PositiveDefiniteBijection()
    g = torch.Generator().manual_seed(D)
    v = torch.randn(4, 3, D * (D + 1) // 2, generator=g, dtype=torch.float64)
    A = t(v)
    assert A.shape == (4, 3, D, D)
    assert torch.equal(A, A.mT)
    assert bool(torch.all(torch.linalg.eigvalsh(A) > 0))
    assert torch.allclose(t.inv(A), v, atol=1e-10)
    assert t.forward_shape(v.shape) == A.shape and t.inverse_shape(A.shape) == v.shape
    assert t.log_abs_det_jacobian(v, A).shape == (4, 3)


@pytest.mark.parametrize("D", [2, 3])
def test_bijection_log_det_against_autograd(D):
    t = zt.PositiveDefiniteBijection()
    rows, cols = torch.tril_indices(D, D)
    g = torch.Generator().manual_seed(10 + D)
    for _ in range(3):
        v = torch.randn(D * (D + 1) // 2, generator=g, dtype=torch.float64)
        # Jacobian of the free entries (lower triangle) of A with respect to v
        J = torch.autograd.functional.jacobian(lambda u: t(u)[rows, cols], v)
        expected = torch.linalg.slogdet(J).logabsdet
        assert float(t.log_abs_det_jacobian(v, t(v))) == pytest.approx(float(expected), abs=1e-10)


def test_biject_to_positive_definite_is_registered():
    import pyro.distributions.constraints as pyro_constraints

    assert pyro_constraints.positive_definite is constraints.positive_definite
    t = biject_to(constraints.positive_definite)
    assert isinstance(t, zt.PositiveDefiniteBijection) and t.bijective
    assert t.domain.event_dim == 1 and t.codomain.event_dim == 2


# ---------------------------------------------------------------- mvn_wishart
def _wishart_problem():
    rng = np.random.default_rng(1)
    cov = np.array([[1.0, 0.5], [0.5, 2.0]])
    mu = np.array([0.3, -0.2])
    x = rng.multivariate_normal(mu, cov, size=40)
    hyper = {"mu": mu, "nu0": 4.5, "W0": np.array([[0.8, 0.1], [0.1, 0.5]])}
    return x, hyper


def test_mvn_wishart_log_evidence_by_bayes_identity():
    x, h = _wishart_problem()
    post = mw.exact({"x": x}, h)
    prior = stats.wishart(df=h["nu0"], scale=h["W0"])
    rng = np.random.default_rng(2)
    points = [np.eye(2), np.array([[0.9, -0.3], [-0.3, 0.6]])] + list(prior.rvs(3, random_state=rng))
    for L in points:
        log_lik = stats.multivariate_normal(h["mu"], np.linalg.inv(L)).logpdf(x).sum()
        value = log_lik + prior.logpdf(L) - post.log_prob({"precision": L})
        assert value == pytest.approx(post.log_evidence, abs=1e-6)


def test_mvn_wishart_moments_against_scipy_draws():
    x, h = _wishart_problem()
    post = mw.exact({"x": x}, h)
    n = 20000
    draws = stats.wishart(df=post.extra["nu_N"], scale=post.extra["W_N"]).rvs(
        n, random_state=np.random.default_rng(3))
    mean, sd = draws.mean(0), draws.std(0, ddof=1)
    se_mean = sd / np.sqrt(n)
    # sd of the sample sd: sqrt(var of (X - m)^2) / (2 sd sqrt(n))
    se_sd = np.sqrt(((draws - mean) ** 2).var(0)) / (2 * sd * np.sqrt(n))
    assert np.all(np.abs(post.mean["precision"] - mean) < 5 * se_mean)
    assert np.all(np.abs(post.sd["precision"] - sd) < 5 * se_sd)
    assert post.sample(np.random.default_rng(4), 3)["precision"].shape == (3, 2, 2)


# ---------------------------------------------------------------- linear regression
def _regression_problem():
    rng = np.random.default_rng(5)
    X = blr.inputs(rng, {"N": 30, "D": 3}, {})["X"]
    hyper = {"sigma": 0.7, "s": 1.5, "prior": "gaussian"}
    y = X @ np.array([1.0, -0.5, 0.2]) + hyper["sigma"] * rng.normal(size=30)
    return {"X": X, "y": y}, hyper


def test_regression_posterior_mean_is_ridge():
    data, h = _regression_problem()
    post = blr.exact(data, h)
    ridge = Ridge(alpha=h["sigma"] ** 2 / h["s"] ** 2, fit_intercept=False).fit(data["X"], data["y"])
    np.testing.assert_allclose(post.mean["w"], ridge.coef_, atol=1e-6)


def test_regression_log_evidence_by_bayes_identity():
    data, h = _regression_problem()
    post = blr.exact(data, h)
    rng = np.random.default_rng(6)
    for w in [np.zeros(3), np.array([1.0, -0.5, 0.2]), *rng.normal(size=(3, 3))]:
        log_lik = stats.norm(data["X"] @ w, h["sigma"]).logpdf(data["y"]).sum()
        log_prior = stats.norm(0, h["s"]).logpdf(w).sum()
        value = log_lik + log_prior - post.log_prob({"w": w})
        assert value == pytest.approx(post.log_evidence, abs=1e-6)


def test_regression_posterior_predictive_against_monte_carlo():
    data, h = _regression_problem()
    post = blr.exact(data, h)
    X_new = np.array([[0.5, 1.0, -1.0], [2.0, 0.0, 3.0]])
    mean, sd = blr.posterior_predictive(data, h, X_new)
    rng = np.random.default_rng(7)
    n = 40000
    w = post.sample(rng, n)["w"]
    y_new = w @ X_new.T + h["sigma"] * rng.normal(size=(n, len(X_new)))
    mc_mean, mc_sd = y_new.mean(0), y_new.std(0, ddof=1)
    se_sd = np.sqrt(((y_new - mc_mean) ** 2).var(0)) / (2 * mc_sd * np.sqrt(n))
    assert np.all(np.abs(mean - mc_mean) < 5 * mc_sd / np.sqrt(n))
    assert np.all(np.abs(sd - mc_sd) < 5 * se_sd)


def test_regression_no_exact_for_laplace():
    assert blr.no_exact({"prior": "laplace"}) == "the Laplace prior has no closed-form posterior"
    assert blr.no_exact({"prior": "gaussian"}) is None
    assert blr.SPEC.exact_reason({"prior": "laplace"}) is not None

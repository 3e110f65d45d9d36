"""The claims the walkthrough notebooks make, checked with the same helpers at the same
settings, so the notebooks can keep only the asserts a reader learns from.

Each tolerance is a Monte Carlo standard error or a closed form's rounding; claims already
checked elsewhere (EM against scikit-learn, stick-breaking moments, the Kalman smoother
against dense conditioning, the estimators' variances, NCE's normaliser) are not repeated.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import zoo
from zoo.models import bayesian_linear_regression as blr
from zoo.models import normal_gamma as ng


def test_cavi_is_the_closed_form_mean_field_optimum():
    """Notebook 01: CAVI's q(mu) has sd sqrt(1 - 1/a_n) of the exact one, E_q[tau] is exact,
    and its ELBO gap is log p(x) minus the closed-form ELBO."""
    N = 6
    data, _ = zoo.simulate("normal_gamma", seed=0, N=N)
    h = {k: v.default for k, v in zoo.get_model("normal_gamma").hyper.items()}
    exact = ng.exact(data, h)
    q = ng.cavi(data["x"], h["mu0"], h["kappa0"], h["a0"], h["b0"])
    mu_n, kappa_n, a_n, b_n = (exact.extra[k] for k in ("mu_n", "kappa_n", "a_n", "b_n"))
    exact_var_mu = float(exact.sd["mu"]) ** 2
    assert exact_var_mu == pytest.approx(b_n / (kappa_n * (a_n - 1)), rel=1e-12)  # the Student-t's variance
    assert q["a_N"] / q["b_N"] == pytest.approx(a_n / b_n, rel=1e-6)
    ratio = np.sqrt(1 / q["lam_N"] / exact_var_mu)
    assert ratio == pytest.approx(np.sqrt(1 - 1 / a_n), rel=1e-6)

    cmp = zoo.compare("normal_gamma", backends=["exact", "cavi"], data=data, seed=0)
    table, sc = cmp.table.set_index("backend"), cmp.scalars.set_index(["backend", "name"])
    n = table.loc["cavi", "draws"]
    # the sd of a sample-sd ratio from n independent normal draws is ratio / sqrt(2 n): 4 of them
    assert abs(sc.loc[("cavi", "mu"), "sd_ratio"] - ratio) < 4 * ratio / np.sqrt(2 * n)
    gap = table.loc["cavi", "elbo_gap"]
    assert gap == pytest.approx(exact.log_evidence - q["elbo_trace"][-1], abs=1e-9) and gap > 0


@pytest.mark.slow
def test_mean_field_on_correlated_regression_has_the_conditional_sds():
    """Notebook 01: on a Gaussian posterior N(m, S) with precision L, mean-field SVI's sds are
    1 / sqrt(L_jj), its ELBO gap KL = 0.5 log(prod L_jj det S); a full-rank guide is exact."""
    rng = np.random.default_rng(0)
    corr = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]])
    X = rng.normal(size=(50, 3)) @ np.linalg.cholesky(corr).T
    y = X @ np.array([1.0, -0.5, 0.25]) + rng.normal(size=50)
    cmp = zoo.compare("bayesian_linear_regression", backends=["exact", "svi", "svi:full_rank"],
                      data={"X": X, "y": y}, seed=0)
    _, S = blr.posterior_params(X, y, sigma=1.0, s=1.0)
    L = np.linalg.inv(S)
    mf_ratio = 1 / np.sqrt(np.diag(L) * np.diag(S))
    ratios = cmp.scalars.pivot(index="name", columns="backend", values="sd_ratio")
    # 4000 draws give a ratio a Monte Carlo sd of about 0.011; 0.05 adds the optimiser's stopping point
    assert np.allclose(ratios["svi"], mf_ratio, atol=0.05)
    assert np.allclose(ratios["svi:full_rank"], 1, atol=0.05)
    kl = 0.5 * np.log(np.prod(np.diag(L)) * np.linalg.det(S))
    M = np.eye(3) - L @ np.diag(1 / np.diag(L))
    se = np.sqrt(0.5 * np.trace(M @ M) / 2000)  # the ELBO from 2000 draws of log weights
    gaps = cmp.table.set_index("backend")["elbo_gap"]
    assert abs(gaps["svi"] - kl) < 4 * se
    assert -0.01 <= gaps["svi:full_rank"] < 0.05


@pytest.mark.parametrize("N, t", [(10, 2), (20, 2), (50, 3)])
def test_hoeffding_bound_of_ucb1(N, t):
    """Notebook 04 (000, 式5-4 and 5-5): with eps = sqrt(2 ln t / N), Hoeffding's bound
    exp(-2 N eps^2) is t^-4, and the exact binomial tail probability stays below it."""
    eps = np.sqrt(2 * np.log(t) / N)
    assert np.exp(-2 * N * eps**2) == pytest.approx(t**-4.0, rel=1e-12)
    k = np.arange(N + 1)
    miss = np.abs(k / N - 0.3) >= eps - 1e-12
    assert stats.binom(N, 0.3).pmf(k)[miss].sum() <= t**-4.0

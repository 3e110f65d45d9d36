"""Accuracy of the back-ends against the exact posterior on each model's default data.

Yardsticks (DESIGN.md): |z| = |mean - mean_exact| / sd_exact < 0.25 and sd ratio within
0.85-1.15. With an effective sample size of at least 200 the standard error of z is at most
0.07 and that of the sd ratio about 1/sqrt(2 ESS) = 0.05, so both bounds sit at 3 to 3.5
standard errors; each test checks that ESS before it checks the numbers.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import Ridge

import zoo
from zoo import registry
from zoo.models import normal_gamma

pytestmark = pytest.mark.slow

EXACT_MODELS = [n for n, s in registry.MODELS.items() if s.reference.exact is not None]
# 4 chains: the batched sampler runs them as one batch for about the cost of 2. With 2 x 400
# draws NUTS's bulk ESS on the one-dimensional posteriors was 149-189 (Pyro's own kernel: 186-205),
# under the 200 the yardsticks need.
NUTS = {"num_samples": 400, "num_warmup": 300, "num_chains": 4}
# linear_gaussian_ssm's 100 latent scalars take NUTS minutes at T=50: tests/test_ssm.py checks
# NUTS against the Kalman smoother at T=10 instead.
NUTS_MODELS = [n for n in EXACT_MODELS if n not in ("uniform_pareto", "linear_gaussian_ssm")]
# Importance sampling needs a proposal close to the posterior in every direction: fine in a few
# dimensions, degenerate in the state-space model's 100 (tested below as such).
IMPORTANCE_MODELS = [n for n in EXACT_MODELS if n != "linear_gaussian_ssm"]


def _scores(cmp, backend):
    return cmp.scalars[cmp.scalars["backend"] == backend]


def _check(cmp, backend, z=0.25, ratio=(0.85, 1.15), min_ess=200):
    row = cmp.table.set_index("backend").loc[backend]
    assert row["ess_bulk_min"] >= min_ess, f"{backend}: ESS {row['ess_bulk_min']:.0f} too small to judge"
    assert row["max_abs_z"] < z, _scores(cmp, backend)[["name", "z", "sd_ratio"]]
    assert ratio[0] <= row["sd_ratio_min"] and row["sd_ratio_max"] <= ratio[1], \
        _scores(cmp, backend)[["name", "z", "sd_ratio"]]


@pytest.mark.parametrize("name", NUTS_MODELS)
def test_nuts_matches_exact(name):
    cmp = zoo.compare(name, backends=["nuts"], **NUTS)
    _check(cmp, "nuts")
    assert cmp.table["r_hat_max"].iloc[0] < 1.02


def test_nuts_on_a_hard_edge_reports_divergences():
    """uniform_pareto: the posterior of theta ends in a cliff at max(x); NUTS must say so."""
    with pytest.warns(RuntimeWarning, match="divergent transitions"):
        cmp = zoo.compare("uniform_pareto", backends=["nuts"], **NUTS)
    assert cmp.table["divergences"].iloc[0] > 0
    assert "divergent" in cmp.table["note"].iloc[0]


@pytest.mark.parametrize("name", IMPORTANCE_MODELS)
def test_importance_matches_exact_and_estimates_evidence(name):
    cmp = zoo.compare(name, backends=["importance"], num_particles=100_000)
    _check(cmp, "importance")
    row = cmp.table.iloc[0]
    if cmp.exact.log_evidence is not None:  # a stored MCMC reference has no evidence
        # delta method: sd of log(mean w) is about 1/sqrt(weight ESS)
        assert abs(row["log_evidence_error"]) < 5 / np.sqrt(row["weight_ess"])


def test_importance_says_when_it_degenerates():
    """In the state-space model's 100 dimensions the weights collapse onto a few draws; the
    table must say so (Pareto k) rather than pass the draws off as a posterior."""
    cmp = zoo.compare("linear_gaussian_ssm", backends=["importance"], num_particles=20_000)
    row = cmp.table.iloc[0]
    assert row["pareto_k"] > 0.7 and "unreliable" in row["note"]
    assert row["weight_ess"] < 200


@pytest.mark.parametrize("name, guide", [("normal_known_variance", "mean_field"),
                                         ("bayesian_linear_regression", "full_rank"),
                                         ("poisson_gamma", "mean_field")])
def test_svi_accurate_where_the_guide_family_holds_the_posterior(name, guide):
    cmp = zoo.compare(name, backends=["exact", f"svi:{guide}"])
    _check(cmp, f"svi:{guide}", ratio=(0.9, 1.1))
    row = cmp.table.set_index("backend").loc[f"svi:{guide}"]
    # the ELBO is a lower bound: the gap is positive up to its Monte Carlo error
    assert row["elbo_gap"] > -0.05


def test_mean_field_under_disperses_on_normal_gamma():
    """The notes' CAVI (004 2.2.3) and SVI's mean field both make sd(mu) too small."""
    data, _ = zoo.simulate("normal_gamma", seed=0, N=10)
    spec = zoo.get_model("normal_gamma")
    h = {k: v.default for k, v in spec.hyper.items()}
    exact = spec.reference.exact(data, h)
    q = normal_gamma.cavi(data["x"], **h)
    predicted = np.sqrt(1 / q["lam_N"]) / exact.sd["mu"]
    assert predicted < 0.95

    # a fixed 1500-step schedule: the optimum, not the stopping rule, is under test here
    cmp = zoo.compare("normal_gamma", backends=["exact", "cavi", "svi"], data=data,
                      num_samples=5000, num_steps=1500, options={"svi": {"converge": False}})
    scores = cmp.scalars.set_index(["backend", "name"])
    # cavi: 20000 draws of a normal; sd estimate has relative standard error 1/sqrt(40000)
    assert abs(scores.loc[("cavi", "mu"), "sd_ratio"] - predicted) < 4 / np.sqrt(40000)
    # svi's mean field is Normal x LogNormal, not Normal x Gamma, but its optimum is as narrow
    ratio = scores.loc[("svi", "mu"), "sd_ratio"]
    assert ratio < 0.97 and abs(ratio - predicted) < 0.03
    assert abs(scores.loc[("svi", "mu"), "z"]) < 0.1
    # CAVI's ELBO sits below the exact log evidence
    assert 0 < cmp.table.set_index("backend").loc["cavi", "elbo_gap"] < 1


def test_map_equals_ridge_regression():
    data, _ = zoo.simulate("bayesian_linear_regression", seed=1)
    res = zoo.run("bayesian_linear_regression", "svi", data=data, guide="delta", num_steps=1500)
    ridge = Ridge(alpha=1.0 ** 2 / 1.0 ** 2, fit_intercept=False).fit(data["X"], data["y"])
    np.testing.assert_allclose(res.draws("w")[0], ridge.coef_, atol=2e-3)
    assert np.ptp(res.draws("w"), axis=0).max() == 0, "MAP is a point mass"


def test_exact_draws_match_closed_form_through_the_backend():
    res = zoo.run("beta_bernoulli", "exact", num_samples=5000, seed=0)
    data, _ = zoo.simulate("beta_bernoulli", seed=0)
    post = stats.beta(2 + data["y"].sum(), 2 + len(data["y"]) - data["y"].sum())
    p = res.draws("p")
    assert abs(p.mean() - post.mean()) < 5 * post.std() / np.sqrt(len(p))
    assert stats.kstest(p, post.cdf).pvalue > 1e-3

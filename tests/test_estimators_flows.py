"""Issue 4 items 3 to 5: discrete-latent gradient estimators, RealNVP flows, NCE.

References are independent of the code under test: finite differences of a numpy ELBO,
torch.autograd's Jacobian, scikit-learn's logistic regression, scipy's Wasserstein distance
and the funnel's exact marginal.
"""
from __future__ import annotations

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import special, stats
from sklearn.linear_model import LogisticRegression

import zoo
from zoo.core.problem import prepare
from zoo.inference.common import single_thread
from zoo.models import discrete_latent as dl
from zoo.models import nce_unnormalized as nce
from zoo.models import realnvp_flow as rf


@pytest.fixture(scope="module")
def mix_data():
    return zoo.simulate("discrete_latent", seed=0)[0]


# ---------------------------------------------------------------------------- discrete_latent


def _numpy_elbo_c(a, b, locs, x, sigma):
    """sum_n sum_k q_nk (log N(x_n; locs_k, sigma) - log K - log q_nk), in numpy."""
    logits = np.outer(x, a) + b
    log_q = logits - special.logsumexp(logits, 1, keepdims=True)
    log_p = stats.norm.logpdf(x[:, None], locs[None], sigma) - np.log(len(a))
    return float(np.sum(np.exp(log_q) * (log_p - log_q)))


def test_exact_gradient_matches_finite_differences(mix_data):
    x = mix_data["x"]
    p = dl.default_point(x, 3, 1.0)
    exact = dl.exact_gradient(p["a"], p["b"], p["locs"], x, 1.0)
    theta, h, fd = np.concatenate([p["a"], p["b"]]), 1e-6, []
    for j in range(6):
        e = np.zeros(6)
        e[j] = h
        up, down = theta + e, theta - e
        fd.append((_numpy_elbo_c(up[:3], up[3:], p["locs"], x, 1.0)
                   - _numpy_elbo_c(down[:3], down[3:], p["locs"], x, 1.0)) / (2 * h))
    np.testing.assert_allclose(exact, fd, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def grad_samples(mix_data):
    x = mix_data["x"]
    p = dl.default_point(x, 3, 1.0)
    return dl.gradient_samples(x, p["locs"], p["a"], p["b"], num_draws=1000, seed=0)


def test_score_function_estimators_are_unbiased(grad_samples):
    samples, exact = grad_samples
    for label in ("reinforce", "reinforce_baseline", "nvil"):
        g = samples[label]
        assert g.shape == (1000, 6) and np.all(np.isfinite(g))
        se = g.std(0, ddof=1) / np.sqrt(len(g))
        assert np.all(np.abs(g.mean(0) - exact) < 4 * se), (label, g.mean(0), exact, se)


def test_gradient_variance_table_orders_the_estimators(grad_samples, mix_data):
    df = dl.variance_table(*grad_samples)
    small = dl.gradient_variance(mix_data, estimators=("reinforce",), num_draws=50, seed=0)
    assert list(small.estimator) == ["enumeration", "reinforce"]
    assert list(small.columns) == list(df.columns)
    assert list(df.columns) == ["estimator", "temperature", "mean_grad_norm", "variance", "bias_norm",
                                "bias_max_z", "exact_grad_norm"]
    v = df.set_index(df.estimator + df.temperature.map(lambda t: "" if np.isnan(t) else f":{t:g}"))
    # measured at seeds 0-2: reinforce ~1000, decaying-average baseline ~330, NVIL ~450,
    # Gumbel-softmax 2400-3100 (0.1), ~380 (0.5), ~160 (1.0)
    assert v.loc["reinforce", "variance"] > 2 * v.loc["reinforce_baseline", "variance"]
    assert v.loc["reinforce", "variance"] > 1.5 * v.loc["nvil", "variance"]
    assert v.loc["gumbel_softmax:0.1", "variance"] > v.loc["gumbel_softmax:0.5", "variance"] > \
        v.loc["gumbel_softmax:1", "variance"]
    # the relaxation is biased, more so at higher temperature (bias z ~12 at 0.5, ~39 at 1.0)
    assert v.loc["gumbel_softmax:1", "bias_max_z"] > 8
    assert v.loc["gumbel_softmax:1", "bias_norm"] > v.loc["gumbel_softmax:0.5", "bias_norm"]
    assert v.loc["enumeration", "variance"] == 0


@pytest.mark.parametrize("backend", list(dl.BACKENDS))
def test_estimator_backends_shapes_and_repeatability(mix_data, backend):
    opts = {"num_samples": 30, "num_chains": 2, "num_steps": 30}
    a = zoo.run("discrete_latent", backend, data=mix_data, seed=2, **opts)
    b = zoo.run("discrete_latent", backend, data=mix_data, seed=2, **opts)
    post = a.idata.posterior
    # independent draws of a fitted guide: one chain of 2 x 30
    assert post["locs"].shape == (1, 60, 3) and post["c"].shape == (1, 60, 100)
    assert set(np.unique(post["c"].values)) <= {0, 1, 2}
    np.testing.assert_array_equal(a.draws("locs"), b.draws("locs"))
    np.testing.assert_array_equal(a.draws("c"), b.draws("c"))
    assert np.all(np.diff(a.draws("locs"), axis=-1) >= 0), "relabelled: locs sorted in every draw"
    d = a.diagnostics
    assert len(d["elbo_trace"]) == 30 and np.all(np.isfinite(d["elbo_trace"])) and np.isfinite(d["elbo"])
    assert d["grad_variance"] >= 0 and (d["grad_variance"] == 0) == (backend == "enumeration")


@pytest.mark.slow
def test_exact_gradient_trains_further_than_reinforce(mix_data):
    h = {"K": 3, "sigma": 1.0, "mu0": 0.0, "sigma0": 3.0}
    res = {e: dl.train(mix_data["x"], e, num_steps=300, seed=0, **h) for e in ("reinforce", "enumeration")}
    for e, q in res.items():
        assert q["elbo_trace"][-1] > q["elbo_trace"][0] + 500, e
    # same steps, same start: the exact gradient ends higher (measured -263 against -272 at 500 steps)
    last = {e: np.mean(q["elbo_trace"][-20:]) for e, q in res.items()}
    assert last["enumeration"] > last["reinforce"]


def test_relabel_permutes_locs_and_c_together():
    locs = np.array([[[2.0, -1.0, 0.5]]])
    c = np.array([[[0, 1, 2, 0]]])
    out = dl.relabel({"locs": locs, "c": c})
    np.testing.assert_array_equal(out["locs"], [[[-1.0, 0.5, 2.0]]])
    # the point in old cluster 0 (mean 2) is now in cluster 2, and so on
    np.testing.assert_array_equal(out["c"], [[[2, 0, 1, 2]]])
    np.testing.assert_array_equal(out["locs"][0, 0, out["c"][0, 0]], locs[0, 0, c[0, 0]])


def test_discrete_latent_rejects_one_category(mix_data):
    with pytest.raises(zoo.ZooError, match=r"discrete_latent.*K.*K=1"):
        zoo.run("discrete_latent", "reinforce", data=mix_data, hyper={"K": 1})


def test_discrete_latent_diagnose_scores_against_truth():
    data, truth = zoo.simulate("discrete_latent", seed=0)
    problem = prepare(zoo.get_model("discrete_latent"), data)
    post = dl.relabel({"locs": np.asarray(truth["locs"])[None, None], "c": np.asarray(truth["c"])[None, None]})
    out = dl.diagnose(problem, post, truth)
    assert out["ari"] == pytest.approx(1.0)
    assert out["loglik_per_point"] == pytest.approx(out["truth_loglik_per_point"])
    assert "ari" not in dl.diagnose(problem, post, None)


# ---------------------------------------------------------------------------- realnvp_flow


def test_coupling_log_det_matches_autograd_jacobian():
    flow = rf.coupling_transform(2, num_layers=4, hidden=8, seed=3)
    z = torch.randn(6, 2, dtype=torch.float64)
    by_layers = rf.log_det_by_layers(flow, z).detach()
    x = flow(z)
    composed = flow.log_abs_det_jacobian(z, x).detach()
    jac = torch.stack([torch.autograd.functional.jacobian(flow, zi) for zi in z])
    reference = torch.linalg.slogdet(jac)[1]
    np.testing.assert_allclose(by_layers, reference, rtol=0, atol=1e-8)
    np.testing.assert_allclose(composed, reference, rtol=0, atol=1e-8)
    # the inverse (the notes' f: data to base, eq 3.5) and its Jacobian determinant
    inv = flow.inv
    jac_inv = torch.stack([torch.autograd.functional.jacobian(inv, xi) for xi in x.detach().clone()])
    np.testing.assert_allclose(torch.linalg.slogdet(jac_inv)[1], -reference, rtol=0, atol=1e-8)
    np.testing.assert_allclose(inv(x.detach().clone()).detach(), z, rtol=0, atol=1e-10)


def test_flow_log_prob_integrates_to_one():
    flow = rf.coupling_transform(2, num_layers=2, hidden=8, seed=0)
    fit = rf.FlowFit(flow, [], 0.0)
    g = np.linspace(-12, 12, 481)
    g0, g1 = np.meshgrid(g, g)
    dens = np.exp(fit.log_prob(np.stack([g0.ravel(), g1.ravel()], 1)))
    assert np.sum(dens) * (g[1] - g[0]) ** 2 == pytest.approx(1.0, abs=2e-3)


def test_flow_mle_backend_runs_and_repeats():
    a = zoo.run("realnvp_flow", "mle", seed=0, num_steps=20)
    b = zoo.run("realnvp_flow", "mle", seed=0, num_steps=20)
    d = a.diagnostics
    assert len(d["loglik_trace"]) == 20 and np.all(np.isfinite(d["loglik_trace"]))
    assert d["loglik_trace"] == b.diagnostics["loglik_trace"]
    assert d["train_points"] + d["test_points"] == 500
    assert d["loglik_trace"][-1] > d["loglik_trace"][0]


def test_flow_rejects_non_planar_data():
    with pytest.raises(zoo.ZooError, match=r"realnvp_flow.*x.*D=3"):
        zoo.run("realnvp_flow", "mle", data={"x": np.zeros((10, 3))})


@pytest.mark.slow
def test_flow_beats_a_gaussian_on_held_out_moons(tmp_path):
    x = rf.two_moons(400, seed=1)
    fit = rf.fit_flow(x[:300], num_steps=300, seed=0)
    gauss = stats.multivariate_normal(x[:300].mean(0), np.cov(x[:300].T, bias=True))
    flow_ll, gauss_ll = np.mean(fit.log_prob(x[300:])), np.mean(gauss.logpdf(x[300:]))
    assert flow_ll > gauss_ll + 0.3, (flow_ll, gauss_ll)  # measured about 0.7 nats per point at 800 steps
    path = rf.density_plot(fit, x, tmp_path / "moons.png", grid=40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _funnel():
    v = pyro.sample("v", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0))
    pyro.sample("u", dist.Normal(torch.tensor(0.0, dtype=torch.float64), torch.exp(v / 2)))


def _fit_guide(guide, steps=600, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    opt = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.1 ** (1 / steps)})
    svi = pyro.infer.SVI(_funnel, guide, opt, pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True))
    with single_thread():
        for _ in range(steps):
            svi.step()
    with torch.no_grad(), pyro.plate("draws", 4000, dim=-1):
        return guide()["v"].numpy()


@pytest.mark.slow
def test_coupling_guide_beats_mean_field_on_the_funnel():
    """Neal's funnel: v ~ N(0, 3) exactly. Measured (600 steps): flow sd 2.88 and W1 0.14 sd;
    mean field sd 1.27 and W1 0.50 sd."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_default_dtype(torch.float64)
        try:
            v_flow = _fit_guide(rf.coupling_guide(_funnel, num_layers=4, hidden=16))
            v_mf = _fit_guide(pyro.infer.autoguide.AutoNormal(_funnel))
        finally:
            torch.set_default_dtype(torch.float32)
    exact = np.random.default_rng(0).normal(0, 3, 20000)
    w_flow = stats.wasserstein_distance(v_flow, exact) / 3
    w_mf = stats.wasserstein_distance(v_mf, exact) / 3
    assert abs(v_flow.std() - 3) < 0.5 and v_mf.std() < 2.0
    assert w_flow < 0.5 * w_mf, (w_flow, w_mf)


# ---------------------------------------------------------------------------- nce_unnormalized


def _nce_inputs(seed, n=200, nu=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 0.5, n)
    loc, scale = x.mean(), 1.5 * x.std()
    return x, rng.normal(loc, scale, nu * n), loc, scale


def test_nce_equals_logistic_regression_of_data_against_noise():
    """log p_m - log p_n is linear in (1, u, u^2), so NCE is a logistic regression on those
    features: scikit-learn's fit, shifted by the noise's own coefficients, is the NCE estimate."""
    x, y, loc, scale = _nce_inputs(0)
    est = nce.nce_fit(x, y, loc, scale)
    u = np.concatenate([x, y])
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(np.c_[u, u**2], np.r_[np.ones(200), np.zeros(200)])
    eta = np.array([lr.intercept_[0] - 0.5 * np.log(2 * np.pi * scale**2) - loc**2 / (2 * scale**2),
                    lr.coef_[0, 0] + loc / scale**2, lr.coef_[0, 1] - 1 / (2 * scale**2)])
    np.testing.assert_allclose(est["eta"], eta, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nu", [1, 4])
def test_nce_log_z_is_the_normaliser_within_its_standard_error(nu):
    """The learned log Z against the exact 1/2 log(2 pi / tau) at the learned tau, within 4
    standard errors from NCE's asymptotic covariance (Gutmann and Hyvarinen 2012, Theorem 3:
    Sigma = I^-1 - (1 + 1/nu) I^-1 m m^T I^-1 with I = E_d[g g^T P], m = E_d[g P],
    P = nu p_n / (p_m + nu p_n), g = (1, u, u^2)) and the delta method. Over 100 seeds the
    formula gave se 0.032 (nu=1), 0.016 (nu=4); the errors' sd was 0.032 and 0.015."""
    x, y, loc, scale = _nce_inputs(5, nu=nu)
    est = nce.nce_fit(x, y, loc, scale)
    _, e1, e2 = est["eta"]
    f = np.c_[np.ones_like(x), x, x**2]
    p_noise = 1 - special.expit(f @ est["eta"] - stats.norm.logpdf(x, loc, scale) - np.log(nu))
    info = (f * p_noise[:, None]).T @ f / len(x)
    m = (f * p_noise[:, None]).mean(0)
    inv = np.linalg.inv(info)
    sigma = inv - (1 + 1 / nu) * inv @ np.outer(m, m) @ inv
    grad = np.array([-1.0, e1 / (2 * e2), -(e1**2) / (4 * e2**2) + 1 / (2 * e2)])
    se = float(np.sqrt(grad @ sigma @ grad / len(x)))
    assert 0.005 < se < 0.06
    err = est["log_z"] - nce.exact_log_z(est["tau"])
    assert abs(err) < 4 * se, (err, se)


def test_nce_and_mle_backends():
    data, _ = zoo.simulate("nce_unnormalized", seed=3)
    x = data["x"]
    mle = zoo.run("nce_unnormalized", "mle", data=data, seed=0, num_samples=10, num_chains=2)
    np.testing.assert_allclose(mle.draws("mu"), x.mean())
    np.testing.assert_allclose(mle.draws("tau"), 1 / x.var())
    assert mle.diagnostics["log_z_error"] == pytest.approx(0.0, abs=1e-12)
    a = zoo.run("nce_unnormalized", "nce", data=data, seed=0, num_samples=10, num_chains=2)
    b = zoo.run("nce_unnormalized", "nce", data=data, seed=0, num_samples=10, num_chains=2)
    c = zoo.run("nce_unnormalized", "nce", data=data, seed=1, num_samples=10, num_chains=2)
    assert a.idata.posterior["log_z"].shape == (1, 20) and a.kind == "point"
    np.testing.assert_array_equal(a.draws("log_z"), b.draws("log_z"))
    assert a.diagnostics["log_z"] != c.diagnostics["log_z"]
    d = a.diagnostics
    assert d["log_z_exact"] == pytest.approx(nce.exact_log_z(float(a.draws("tau")[0])))
    assert abs(d["log_z_error"]) < 0.2  # 0.2 is > 6 sd at N = 200, nu = 1 (sd about 0.03)
    # NCE is close to the MLE of the same data, within the spread of either
    assert abs(d["log_z"] - mle.diagnostics["log_z"]) < 0.2


def test_unnormalized_density_is_vectorised_and_simulates_normal_data():
    d = nce.UnnormalizedNormal(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64),
                               torch.tensor(0.3, dtype=torch.float64))
    v = torch.tensor([0.5, 0.5], dtype=torch.float64)
    np.testing.assert_allclose(d.log_prob(v), stats.norm.logpdf(0.5, [0, 1], 0.5) + nce.exact_log_z(4.0) - 0.3)
    pyro.set_rng_seed(0)
    s = d.expand([20000, 2]).sample()
    assert s.shape == (20000, 2)
    np.testing.assert_allclose(s.std(0), 0.5, rtol=0.03)

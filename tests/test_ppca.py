"""PPCA and mixture of PPCA (004 3.3.1): closed-form ML, the notes' EM, and their scores,
checked against scikit-learn, scipy and Gaussian conditioning written out in numpy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

import zoo
from zoo.core.problem import prepare
from zoo.models import mixture_ppca, ppca


def _ppca_data(seed: int = 0, N: int = 100, D: int = 5, d: int = 2, sigma: float = 0.5):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(D, d))
    mu = rng.normal(size=D)
    x = rng.normal(size=(N, d)) @ W.T + mu + sigma * rng.normal(size=(N, D))
    return x


def _mppca_truth(seed: int = 0, K: int = 3, D: int = 3, d: int = 1, spread: float = 8.0):
    rng = np.random.default_rng(seed)
    mu = np.zeros((K, D))
    mu[:, 0] = spread * np.arange(K)  # separated along the first axis
    mu[:, 1:] = rng.normal(size=(K, D - 1))
    return {"weights": np.full(K, 1 / K), "W": rng.normal(size=(K, D, d)), "mu": mu,
            "sigma": np.linspace(0.3, 0.6, K)}


# ---------------------------------------------------------------- ppca: closed form


@pytest.mark.parametrize("d", [1, 2, 3])
def test_ml_noise_variance_equals_sklearn_pca(d):
    x = _ppca_data(seed=d)
    N = len(x)
    ml = ppca.ml_solution(x, d)
    pca = PCA(n_components=d).fit(x)
    # sklearn's covariance divides by N - 1; the ML one by N
    np.testing.assert_allclose(ml["sigma"] ** 2, pca.noise_variance_ * (N - 1) / N, rtol=1e-8)
    # the columns of W_ML span the leading principal axes
    U = ml["W"] / np.linalg.norm(ml["W"], axis=0)
    np.testing.assert_allclose(np.abs(U.T @ pca.components_.T), np.eye(d), atol=1e-8)


def test_ml_loglik_is_the_maximised_gaussian_loglik():
    x = _ppca_data()
    ml = ppca.ml_solution(x, 2)
    ref = stats.multivariate_normal(ml["mu"], ml["W"] @ ml["W"].T + ml["sigma"] ** 2 * np.eye(5)).logpdf(x).sum()
    np.testing.assert_allclose(ml["loglik"], ref, rtol=1e-12)
    # it is a maximum: moving any parameter lowers it, rotating W does not change it
    theta = np.pi / 5
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    for W, s, mu in [(ml["W"] * 1.02, ml["sigma"], ml["mu"]), (ml["W"], ml["sigma"] * 1.02, ml["mu"]),
                     (ml["W"], ml["sigma"], ml["mu"] + 0.02), (ml["W"] @ R, ml["sigma"], ml["mu"])]:
        other = stats.multivariate_normal(mu, W @ W.T + s**2 * np.eye(5)).logpdf(x).sum()
        assert other <= ml["loglik"] + 1e-9
    rotated = stats.multivariate_normal(ml["mu"], ml["W"] @ R @ R.T @ ml["W"].T + ml["sigma"] ** 2 * np.eye(5))
    np.testing.assert_allclose(rotated.logpdf(x).sum(), ml["loglik"], rtol=1e-12)


def test_z_conditional_is_gaussian_conditioning():
    """Brute force: (z, x) is jointly Gaussian, [[I, W^T], [W, C]]; condition x on it."""
    rng = np.random.default_rng(3)
    D, d = 5, 2
    W, mu, sigma = rng.normal(size=(D, d)), rng.normal(size=D), 0.7
    x = rng.normal(size=(4, D))
    joint = np.block([[np.eye(d), W.T], [W, W @ W.T + sigma**2 * np.eye(D)]])
    Szx, Sxx = joint[:d, d:], joint[d:, d:]
    mean_ref = (Szx @ np.linalg.solve(Sxx, (x - mu).T)).T
    cov_ref = np.eye(d) - Szx @ np.linalg.solve(Sxx, Szx.T)
    mean, cov = ppca.z_conditional(x, W, mu, sigma)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- ppca: the notes' EM


def test_em_reaches_the_ml_solution_with_a_monotone_trace():
    x = _ppca_data(seed=4)
    N = len(x)
    ml = ppca.ml_solution(x, 2)
    res = zoo.run("ppca", "em", data={"x": x}, seed=0, num_samples=500, num_chains=2, tol=1e-13)
    trace = np.asarray(res.diagnostics["loglik_trace"])
    assert np.all(np.diff(trace) >= -1e-9 * abs(trace[-1])), "EM's log-likelihood never decreases"
    assert len(trace) > 5 and trace[-1] - trace[0] > 1.0
    assert ml["loglik"] - trace[-1] < 1e-3 * N and trace[-1] <= ml["loglik"] + 1e-8
    W = res.idata.posterior["W"].values[0, 0]
    np.testing.assert_allclose(W @ W.T, ml["W"] @ ml["W"].T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.idata.posterior["sigma"].values, ml["sigma"], rtol=1e-6)
    np.testing.assert_allclose(res.idata.posterior["mu"].values[0, 3], ml["mu"], rtol=1e-12)
    # the scores against ML are those of a point at the ML solution
    assert res.diagnostics["cov_rel_error"] < 1e-5 and res.diagnostics["sigma_rel_error"] < 1e-6
    assert abs(res.diagnostics["loglik_gap_per_point"]) < 1e-8
    # z draws follow the exact conditional: means within Monte Carlo error, covariance too
    mean, cov = ppca.z_conditional(x, W, res.idata.posterior["mu"].values[0, 0],
                                   float(res.idata.posterior["sigma"].values[0, 0]))
    z = res.idata.posterior["z"].values.reshape(-1, N, 2)
    se = np.sqrt(np.diag(cov)) / np.sqrt(len(z))
    assert np.max(np.abs(z.mean(0) - mean) / se) < 5.0  # 200 entries: |z| > 5 has p ~ 1e-4
    resid = (z - mean).reshape(-1, 2)
    np.testing.assert_allclose(np.cov(resid.T), cov, rtol=0.05)


def test_diagnose_scores_a_rotated_posterior_as_the_ml_solution():
    """Rotation invariance: draws of W R for random rotations R score like W itself,
    while r_hat on W's entries sees the chains disagree."""
    x = _ppca_data(seed=5)
    ml = ppca.ml_solution(x, 2)
    problem = prepare(zoo.get_model("ppca"), {"x": x})
    rng = np.random.default_rng(0)
    angles = np.concatenate([rng.uniform(0, 0.3, size=(1, 200)), rng.uniform(2.0, 2.3, size=(1, 200))])
    c, s = np.cos(angles), np.sin(angles)
    R = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (2, 200, 2, 2)
    post = {"W": ml["W"] @ R, "mu": np.broadcast_to(ml["mu"], (2, 200, 5)),
            "sigma": np.full((2, 200), ml["sigma"])}
    scores = ppca.diagnose(problem, post, None)
    assert scores["cov_rel_error"] < 1e-12 and abs(scores["loglik_gap_per_point"]) < 1e-10
    # with the same small jitter in both chains, only W's entries tell the chains apart
    post["W"] = (ml["W"] + 0.01 * rng.normal(size=(2, 200, 5, 2))) @ R
    scores = ppca.diagnose(problem, post, None)
    assert scores["cov_rel_error"] < 0.01
    assert scores["r_hat_W_max"] > 1.5
    assert scores["r_hat_WWt_max"] < 1.05


@pytest.mark.parametrize("hyper, data, match", [
    ({"d": 5}, None, "hyperparameter d=5 .*D=5"),
    ({"d": 7}, None, "hyperparameter d=7 .*D=5"),
    ({"d": 0}, None, "hyperparameter d"),
    ({"d": 1.5}, None, "hyperparameter d"),
    ({}, {"x": np.ones(10)}, "data key x must have shape"),
    ({}, {"x": np.full((10, 5), np.nan)}, "data key x has non-finite"),
    ({"d": 2}, {"x": np.ones((2, 5))}, "N=2 points, need more than d=2"),
])
def test_ppca_bad_inputs(hyper, data, match):
    data = data if data is not None else {"x": _ppca_data()}
    with pytest.raises(zoo.ZooError, match="ppca") as err:
        zoo.run("ppca", "em", data=data, hyper=hyper)
    assert err.match(match)


@pytest.mark.slow
def test_nuts_shows_rotation_non_identifiability():
    """Two NUTS chains agree on W W^T (identified) better than on W (rotation ridge), and the
    posterior covariance sits near the ML one (weak priors, N = 40). Measured: 41 s of CPU,
    r_hat_W_max 2.25 against r_hat_WWt_max 1.15, cov_rel_error 0.043, sigma_rel_error 0.067."""
    x = _ppca_data(seed=6, N=40, D=3, d=2)
    res = zoo.run("ppca", "nuts", data={"x": x}, seed=0, num_samples=60, num_warmup=60,
                  num_chains=2, progress=False)
    d = res.diagnostics
    assert d["r_hat_WWt_max"] < d["r_hat_W_max"]
    assert d["cov_rel_error"] < 0.2
    assert d["sigma_rel_error"] < 0.3


# ---------------------------------------------------------------- mixture of PPCA


def test_mppca_em_monotone_and_bounded_by_the_full_gmm():
    truth = _mppca_truth(seed=1, K=3, D=3, d=1, spread=4.0)  # some overlap: EM takes steps
    data, _ = zoo.simulate("mixture_ppca", seed=1, N=300, hyper={"K": 3, "d": 1}, truth=truth)
    x = data["x"]
    N = len(x)
    gmm = GaussianMixture(3, covariance_type="full", n_init=5, random_state=0, tol=1e-8).fit(x)
    for d in (1, 2):
        est = mixture_ppca.em(x, 3, d, rng=np.random.default_rng(0), num_restarts=3, tol=1e-12)
        trace = np.asarray(est["loglik_trace"])
        assert np.all(np.diff(trace) >= -1e-9 * abs(trace[-1]))
        np.testing.assert_allclose(trace[-1], mixture_ppca.loglik(x, est["weights"], est["W"], est["mu"],
                                                                  est["sigma"]), rtol=1e-9)
        assert trace[-1] / N <= gmm.score(x) + 1e-4, "a constrained GMM cannot beat the full one"
        if d == 2:  # d = D - 1: W W^T + sigma^2 I is any covariance, so MPPCA is the full GMM
            assert abs(trace[-1] / N - gmm.score(x)) < 1e-4
        else:
            assert trace[-1] / N > gmm.score(x) - 0.5


def test_mppca_em_recovers_separated_clusters():
    truth = _mppca_truth(seed=2, K=3, D=4, d=2, spread=10.0)
    data, truth = zoo.simulate("mixture_ppca", seed=2, N=150, hyper={"K": 3, "d": 2}, truth=truth)
    res = zoo.run("mixture_ppca", "em", data=data, hyper={"K": 3, "d": 2}, seed=0, truth=truth,
                  num_samples=200, num_chains=2)
    d = res.diagnostics
    assert d["ari"] > 0.9 and d["occupied_clusters"] == 3
    assert d["loglik_per_point"] <= d["sklearn_loglik_per_point"] + 1e-4
    # the relabelled draws are ordered by mu[..., 0] and close to the truth
    mu = res.idata.posterior["mu"].values
    assert np.all(np.diff(mu[..., 0], axis=-1) > 0)
    np.testing.assert_allclose(mu[0, 0, :, 0], truth["mu"][:, 0], atol=0.5)
    # component draws follow the responsibilities: here nearly certain, so match the truth
    comp = res.idata.posterior["component"].values
    assert adjusted_rand_score(truth["component"], comp[0, 0]) > 0.9


@pytest.mark.slow
def test_mppca_svi_and_enum_start_from_em_and_keep_the_components_apart(tmp_path):
    """At the defaults (N=200, K=2): from the best of 200 prior draws both merged the two
    components (ARI 0, -9.08 per point); started at EM's estimate (``Backends.start``) they
    recover the true assignments and scikit-learn's full-covariance mixture's log-likelihood
    within 0.1 per point (a mixture of PPCA has fewer parameters, so it cannot exceed it by
    much).

    enum trains the very guide svi trains (the same options; the component is summed out in
    both), so it is given svi's finished checkpoint: the checkpoint's key (model, data and
    training options) matches, and enum resumes it instead of training it again (60 s)."""
    ckpt = str(tmp_path / "mppca.pt")
    svi = zoo.run("mixture_ppca", "svi", seed=0, progress=False, checkpoint=ckpt)
    enum = zoo.run("mixture_ppca", "enum", seed=0, progress=False, checkpoint=ckpt)
    assert enum.diagnostics["elbo_trace"] == svi.diagnostics["elbo_trace"]  # resumed, not retrained
    for res in (svi, enum):
        d = res.diagnostics
        assert d["converged"] is True
        assert d["ari"] > 0.9 and d["occupied_clusters"] == 2
        assert abs(d["loglik_per_point"] - d["sklearn_loglik_per_point"]) < 0.1


def test_mppca_relabel_is_consistent():
    rng = np.random.default_rng(0)
    K, D, d, N = 3, 2, 1, 10
    post = {"weights": rng.dirichlet(np.ones(K), size=(2, 4)), "W": rng.normal(size=(2, 4, K, D, d)),
            "mu": rng.normal(size=(2, 4, K, D)), "sigma": rng.uniform(size=(2, 4, K)),
            "component": rng.integers(0, K, size=(2, 4, N)), "z": rng.normal(size=(2, 4, N, d))}
    out = mixture_ppca.relabel(post)
    assert np.all(np.diff(out["mu"][..., 0], axis=-1) > 0)
    for site in ("weights", "W", "mu", "sigma"):  # each point keeps its own component's parameters
        before = np.take_along_axis(post[site], post["component"].reshape((2, 4, N) + (1,) * (post[site].ndim - 3)), 2)
        after = np.take_along_axis(out[site], out["component"].reshape((2, 4, N) + (1,) * (out[site].ndim - 3)), 2)
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(out["z"], post["z"])
    np.testing.assert_allclose(np.sort(out["weights"], -1), np.sort(post["weights"], -1))


@pytest.mark.parametrize("hyper, data, match", [
    ({"d": 3}, None, "hyperparameter d=3 .*D=3"),
    ({"d": 0}, None, "hyperparameter d"),
    ({"K": 0}, None, "hyperparameter K"),
    ({"K": 5}, {"x": np.arange(15.0).reshape(5, 3)}, "N=5 points, need more than K=5"),
    ({}, {"x": np.full((10, 3), np.inf)}, "data key x has non-finite"),
    ({}, {"x": np.ones((2, 3, 4))}, "data key x must have shape"),
])
def test_mppca_bad_inputs(hyper, data, match):
    data = data if data is not None else zoo.simulate("mixture_ppca", seed=0, N=20)[0]
    with pytest.raises(zoo.ZooError, match="mixture_ppca") as err:
        zoo.run("mixture_ppca", "em", data=data, hyper=hyper)
    assert err.match(match)

"""The Dirichlet-process mixture (issue 3): stick-breaking, the Polya urn, the blocked Gibbs
sampler against an exactly enumerated posterior, and scikit-learn's DP mixture as a peer."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pyro import poutine
from scipy import special, stats

import zoo
from zoo.core.problem import prepare
from zoo.models import dp_mixture as dp

HYPER = {"alpha": 1.0, "mu0": 0.0, "sigma0": 10.0, "sigma": 1.0}


def _three_blobs(seed: int = 0, n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated unit-variance Gaussian blobs in 2-D and their labels."""
    rng = np.random.default_rng(seed)
    centres = np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])
    z = np.repeat(np.arange(3), n)
    return centres[z] + rng.normal(size=(3 * n, 2)), z


def _batch_se(values: np.ndarray, batches: int = 20) -> np.ndarray:
    """Monte Carlo standard error of the mean of (chain, draw, ...) draws by batch means."""
    c, s = values.shape[:2]
    b = values.reshape((c, batches, s // batches) + values.shape[2:]).mean(2)
    b = b.reshape((c * batches,) + values.shape[2:])
    return b.std(0, ddof=1) / np.sqrt(len(b))


# ------------------------------------------------------------------ stick-breaking and urn


def test_stick_breaking_is_the_closed_form_in_numpy_and_torch():
    rng = np.random.default_rng(0)
    v = rng.beta(1.0, 2.0, size=(7, 5))
    w = dp.stick_breaking(v)
    loop = np.empty((7, 6))
    for k in range(5):
        loop[:, k] = v[:, k] * np.prod(1 - v[:, :k], axis=1)
    loop[:, 5] = np.prod(1 - v, axis=1)
    np.testing.assert_allclose(w, loop, rtol=1e-12)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-12)
    wt = dp.stick_breaking(torch.as_tensor(v))
    assert isinstance(wt, torch.Tensor)
    np.testing.assert_allclose(wt.numpy(), w, rtol=1e-12)
    np.testing.assert_allclose(dp.sticks_from_weights(w), v, rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 3.0])
def test_stick_breaking_weights_match_the_dp_moments(alpha):
    """E[pi_k] = alpha^k / (1 + alpha)^(k+1) (0-based) and the stick left after T-1 breaks,
    the truncated last weight, has mean (alpha / (1 + alpha))^(T-1), so it vanishes as T grows."""
    rng = np.random.default_rng(1)
    n, T = 20000, 30
    w = dp.stick_breaking(rng.beta(1.0, alpha, size=(n, T - 1)))
    k = np.arange(6)  # the first weights: further out the draws are too skewed for a 5-SE rule
    expected = alpha**k / (1 + alpha) ** (k + 1)
    se = w[:, k].std(0) / np.sqrt(n)
    assert np.all(np.abs(w[:, k].mean(0) - expected) < 5 * se)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-12)
    for t in (2, 4, 7):
        left = 1 - w[:, : t - 1].sum(-1)  # the truncated last weight at truncation t
        assert abs(left.mean() - (alpha / (1 + alpha)) ** (t - 1)) < 5 * left.std() / np.sqrt(n) + 1e-12
    assert (alpha / (1 + alpha)) ** (T - 1) < 0.01


@pytest.mark.parametrize("alpha", [0.5, 3.0])
def test_polya_urn_expected_number_of_clusters(alpha):
    rng = np.random.default_rng(2)
    n, reps = 40, 800
    counts = np.array([len(np.unique(dp.polya_urn(alpha, n, rng))) for _ in range(reps)])
    expected = sum(alpha / (alpha + i) for i in range(n))
    assert expected == pytest.approx(dp.expected_clusters(alpha, n))
    assert abs(counts.mean() - expected) < 5 * counts.std(ddof=1) / np.sqrt(reps)
    labels = dp.polya_urn(alpha, n, rng)  # clusters numbered in order of appearance
    assert labels[0] == 0 and np.all(np.diff(np.maximum.accumulate(labels)) <= 1)


def test_larger_alpha_more_clusters_under_the_stick_breaking_prior():
    """Assignments drawn from stick-breaking weights (T large) occupy as many clusters as the
    urn predicts: the urn is the DP with its random measure integrated out (eq 2.10)."""
    rng = np.random.default_rng(3)
    n, reps, T = 50, 3000, 60
    means = []
    for alpha in (0.3, 1.0, 4.0):
        w = dp.stick_breaking(rng.beta(1.0, alpha, size=(reps, T - 1)))
        u = rng.random((reps, n, 1))
        z = np.minimum((np.cumsum(w, -1)[:, None, :] < u).sum(-1), T - 1)
        k = dp.occupied(z, T).sum(-1)
        assert abs(k.mean() - dp.expected_clusters(alpha, n)) < 5 * k.std(ddof=1) / np.sqrt(reps)
        means.append(k.mean())
    assert means[0] < means[1] < means[2]


# ------------------------------------------------------------------ the Pyro model


def test_numpy_log_joint_is_the_pyro_model():
    data, truth = zoo.simulate("dp_mixture", seed=4, N=30, D=3, hyper={"T": 5})
    h = {"T": 5.0, **HYPER}
    state = {k: truth[k] for k in ("sticks", "locs", "assignment")}
    values = {k: torch.as_tensor(v) for k, v in state.items()}
    hyper = {k: torch.tensor(v, dtype=torch.float64) for k, v in h.items()}
    tr = poutine.trace(poutine.condition(dp.model, values)).get_trace(
        x=torch.as_tensor(data["x"]), **hyper)
    ours = dp.log_joint(data["x"], state["sticks"], state["locs"], state["assignment"], **HYPER)
    np.testing.assert_allclose(ours, float(tr.log_prob_sum()), rtol=1e-10)
    assert data["x"].shape == (30, 3) and state["locs"].shape == (5, 3) and state["sticks"].shape == (4,)


# ------------------------------------------------------------------ the Gibbs sampler


def _exact_small(x, T, alpha, mu0, sigma0, sigma):
    """Posterior over every assignment of a tiny data set, by enumeration: sticks and locs
    integrated out in closed form (Beta and Gaussian marginal likelihoods)."""
    configs = np.array(list(itertools.product(range(T), repeat=len(x))))
    logp = np.empty(len(configs))
    for c, z in enumerate(configs):
        n = np.bincount(z, minlength=T)
        later = n[::-1].cumsum()[::-1] - n
        lp = np.sum(special.betaln(1 + n[:-1], alpha + later[:-1]) - special.betaln(1, alpha))
        for k in range(T):
            xs = x[z == k, 0]
            if len(xs):
                cov = sigma**2 * np.eye(len(xs)) + sigma0**2
                lp += stats.multivariate_normal.logpdf(xs, np.full(len(xs), mu0), cov)
        logp[c] = lp
    return configs, np.exp(logp - special.logsumexp(logp))


def test_gibbs_matches_the_enumerated_posterior():
    x = np.array([-1.2, -0.5, 0.1, 0.6, 2.0])[:, None]
    T, h = 3, {"alpha": 1.0, "mu0": 0.0, "sigma0": 2.0, "sigma": 1.0}
    configs, p = _exact_small(x, T, **h)
    co_exact = np.einsum("c,cij->ij", p, configs[:, :, None] == configs[:, None, :])
    k_exact = np.bincount(dp.occupied(configs, T).sum(-1), weights=p, minlength=T + 1)
    r = dp.gibbs(x, T=T, **h, num_samples=2000, num_warmup=100, num_chains=4, seed=0)
    a = r["assignment"]  # (4, 2000, 5)
    co = (a[..., :, None] == a[..., None, :]).astype(float)
    assert np.all(np.abs(co.mean((0, 1)) - co_exact) <= 5 * _batch_se(co) + 1e-9)
    k = (dp.occupied(a, T).sum(-1)[..., None] == np.arange(T + 1)).astype(float)
    assert np.all(np.abs(k.mean((0, 1)) - k_exact) <= 5 * _batch_se(k) + 1e-9)


def test_gibbs_recovers_three_clusters_like_sklearn():
    x, z = _three_blobs()
    res = zoo.run("dp_mixture", "gibbs", data={"x": x}, truth={"assignment": z}, seed=0,
                  num_samples=300, num_warmup=200, num_chains=2)
    d = res.diagnostics
    assert d["occupied_clusters_mode"] == 3 and d["true_clusters"] == 3
    assert d["sklearn_clusters"] == 3
    assert sum(d["occupied_clusters"].values()) == pytest.approx(1.0)
    assert d["occupied_clusters"][3] > 0.5
    assert d["ari"] > 0.97 and d["sklearn_ari"] > 0.97
    assert d["silhouette"] > 0.6
    # relabelled: the three occupied clusters first, ordered by their first loc coordinate
    locs = res.idata.posterior["locs"].values[..., :3, :].mean((0, 1))
    np.testing.assert_allclose(locs, [[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]], atol=0.5)
    w = dp.stick_breaking(res.idata.posterior["sticks"].values)[..., :3].mean((0, 1))
    np.testing.assert_allclose(w, 1 / 3, atol=0.1)


def test_larger_alpha_more_occupied_clusters_on_the_same_data():
    x = np.random.default_rng(1).normal(0.0, 3.0, size=(60, 1))
    means, ses = [], []
    for alpha in (0.1, 5.0):
        r = dp.gibbs(x, T=15, alpha=alpha, mu0=0.0, sigma0=3.0, sigma=1.0, num_samples=400,
                     num_warmup=100, num_chains=2, seed=0)
        k = dp.occupied(r["assignment"], 15).sum(-1).astype(float)
        means.append(k.mean())
        ses.append(_batch_se(k))
    assert means[1] - means[0] > 5 * np.hypot(*ses)


def test_gibbs_log_joint_rises_from_the_start_and_is_reproducible():
    data, _ = zoo.simulate("dp_mixture", seed=0)
    a = zoo.run("dp_mixture", "gibbs", data=data, seed=3, num_samples=50, num_warmup=50, num_chains=2)
    b = zoo.run("dp_mixture", "gibbs", data=data, seed=3, num_samples=50, num_warmup=50, num_chains=2)
    c = zoo.run("dp_mixture", "gibbs", data=data, seed=4, num_samples=50, num_warmup=50, num_chains=2)
    for site in ("sticks", "locs", "assignment"):
        np.testing.assert_array_equal(a.draws(site), b.draws(site))
    assert not np.array_equal(a.draws("locs"), c.draws("locs"))
    trace = np.asarray(a.diagnostics["log_joint_trace"])
    assert trace.shape == (101,)
    # from one cluster holding every point to the posterior: far up, then flat
    assert a.diagnostics["log_joint_mean"] > trace[0] + 500
    assert np.mean(trace[51:76]) == pytest.approx(np.mean(trace[76:]), abs=20)
    # the trace is the Pyro model's log joint at the raw (not relabelled) states, and the
    # relabelled draws describe the same fit: equal likelihood of x
    problem = prepare(zoo.get_model("dp_mixture"), data)
    raw = dp.gibbs(data["x"], T=10, **HYPER, num_samples=50, num_warmup=50, num_chains=2, seed=3)
    np.testing.assert_allclose(trace, raw["log_joint_trace"].mean(0))
    for i in range(2):
        for state in ({k: raw[k][i, -1] for k in ("sticks", "locs", "assignment")},
                      {k: a.idata.posterior[k].values[i, -1] for k in ("sticks", "locs", "assignment")}):
            tr = poutine.trace(poutine.condition(problem.model, {k: torch.as_tensor(v) for k, v in state.items()})).get_trace()
            tr.compute_log_prob()
            centre = state["locs"][state["assignment"]]
            np.testing.assert_allclose(tr.nodes["x"]["log_prob"].sum().item(),
                                       stats.norm.logpdf(data["x"], centre, 1.0).sum(), rtol=1e-10)
        tr_raw = poutine.trace(poutine.condition(problem.model, {k: torch.as_tensor(raw[k][i, -1]) for k in
                                                                 ("sticks", "locs", "assignment")})).get_trace()
        np.testing.assert_allclose(float(tr_raw.log_prob_sum()), raw["log_joint_trace"][i, -1], rtol=1e-10)


def test_relabel_keeps_the_mixture_and_orders_occupied_components():
    rng = np.random.default_rng(5)
    S, T, N = 6, 5, 20
    post = {"sticks": rng.beta(1.0, 1.0, size=(2, S // 2, T - 1)),
            "locs": rng.normal(size=(2, S // 2, T, 2)),
            "assignment": rng.integers(0, 3, size=(2, S // 2, N)) * 2}  # components 0, 2, 4
    out = dp.relabel(post)
    for c, s in itertools.product(range(2), range(S // 2)):
        w0, w1 = dp.stick_breaking(post["sticks"][c, s]), dp.stick_breaking(out["sticks"][c, s])
        a0, a1 = post["assignment"][c, s], out["assignment"][c, s]
        np.testing.assert_allclose(post["locs"][c, s][a0], out["locs"][c, s][a1])  # same centres
        np.testing.assert_allclose(w0[a0], w1[a1])  # same weights
        np.testing.assert_allclose(np.sort(w0), np.sort(w1), rtol=1e-9)
        used = np.unique(a1)
        np.testing.assert_array_equal(used, np.arange(len(used)))  # occupied first
        assert np.all(np.diff(w1[len(used):]) <= 1e-12)  # empty ones by decreasing weight
    # the pivot draw (least-squares clustering) has its clusters in order of first loc coordinate
    pivot = dp.point_clustering(post["assignment"], return_index=True)
    c, s = divmod(pivot, S // 2)
    assert np.all(np.diff(out["locs"][c, s][np.unique(out["assignment"][c, s]), 0]) > 0)
    # without assignments: components by decreasing weight
    w = dp.stick_breaking(dp.relabel({k: post[k] for k in ("sticks", "locs")})["sticks"])
    assert np.all(np.diff(w, axis=-1) <= 1e-12)


def test_diagnose_without_truth_and_skip_nuts_by_default():
    data, truth = zoo.simulate("dp_mixture", seed=0)
    problem = prepare(zoo.get_model("dp_mixture"), data)
    post = {k: v[None, None] for k, v in truth.items()}
    d = dp.diagnose(problem, post, None)
    assert "ari" not in d and d["occupied_clusters"] == {len(np.unique(truth["assignment"])): 1.0}
    assert dp.diagnose(problem, post, truth)["ari"] == 1.0
    spec = zoo.get_model("dp_mixture")
    assert "nuts" in spec.backends.skip_by_default and spec.scoring.relabel is dp.relabel and spec.scoring.relabel_note


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("hyper, match", [
    ({"T": 1}, "T"),
    ({"T": 2.5}, "T"),
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": -1.0}, "alpha"),
    ({"sigma": 0.0}, "sigma"),
    ({"alpha": float("nan")}, "alpha"),
])
def test_bad_hyperparameters_raise(hyper, match):
    x, _ = _three_blobs(n=5)
    with pytest.raises(zoo.ZooError, match=f"dp_mixture.*{match}"):
        zoo.run("dp_mixture", "gibbs", data={"x": x}, hyper=hyper, num_samples=5, num_warmup=5)


def test_bad_data_and_options_raise():
    x, _ = _three_blobs(n=5)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(zoo.ZooError, match="dp_mixture.*x.*(NaN|non-finite)"):
        zoo.run("dp_mixture", "gibbs", data={"x": bad})
    with pytest.raises(zoo.ZooError, match="dp_mixture.*x.*shape"):
        zoo.run("dp_mixture", "gibbs", data={"x": x[:, :, None]})  # (N,) and (N, D) are fine
    with pytest.raises(zoo.ZooError, match="dp_mixture.*num_samples"):
        zoo.run("dp_mixture", "gibbs", data={"x": x}, num_samples=0)
    with pytest.raises(zoo.ZooError, match="alpha"):
        dp.polya_urn(0.0, 5, np.random.default_rng(0))

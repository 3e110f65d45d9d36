"""The deep latent-variable models `vae` and `vrnn`: shapes, bounds, repeatability, errors.

Numbers are checked against independent references: a numpy re-implementation of the VAE's
networks and continuous-Bernoulli density, and the ordering ELBO <= IWAE_5 <= IWAE_50 that
holds in expectation (tolerance from the Monte Carlo standard error).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pyro import poutine

import zoo
from zoo.core.problem import prepare
from zoo.inference.common import log_densities, prior, sample_vectorised
from zoo.models import vae, vrnn

SMALL_VAE = {"num_steps": 40, "num_samples": 10, "num_chains": 2, "num_elbo_particles": 10,
             "lr": 0.01, "progress": False}
SMALL_VRNN = {"num_steps": 10, "num_samples": 10, "num_chains": 2, "num_elbo_particles": 10,
              "lr": 0.01, "progress": False}


@pytest.fixture(scope="module")
def digits64():
    return {"x": vae.digits()[0][:64]}


@pytest.fixture(scope="module")
def vae_result(digits64):
    return zoo.run("vae", "svi", data=digits64, seed=0, hyper={"hidden": 16}, **SMALL_VAE)


@pytest.fixture(scope="module")
def vrnn_data():
    return zoo.simulate("vrnn", seed=0, N=8, T=6)[0]


@pytest.fixture(scope="module")
def vrnn_result(vrnn_data):
    return zoo.run("vrnn", "svi", data=vrnn_data, seed=0, **SMALL_VRNN)


def _np_elbo(x, nets, num, rng):
    """ELBO per point from the stored weights, in numpy (independent of the torch code):
    encoder fc1-ReLU-(mu, logvar), decoder fc3-ReLU-fc4 logits, continuous Bernoulli."""
    e, dcd = ({k: np.asarray(v) for k, v in nets[n].items()} for n in ("encoder", "decoder"))
    lin = lambda a, w, b: a @ w.T + b
    h = np.maximum(lin(x, e["fc1.weight"], e["fc1.bias"]), 0)
    mu = lin(h, e["fc_mu.weight"], e["fc_mu.bias"])
    sd = np.exp(0.5 * np.clip(lin(h, e["fc_logvar.weight"], e["fc_logvar.bias"]), -20, 10))
    z = mu + sd * rng.standard_normal((num,) + mu.shape)
    logits = lin(np.maximum(lin(z, dcd["fc3.weight"], dcd["fc3.bias"]), 0), dcd["fc4.weight"], dcd["fc4.bias"])
    lam = 1 / (1 + np.exp(-logits))
    # continuous Bernoulli: lam^x (1-lam)^(1-x) C(lam), C = 2 atanh(1 - 2 lam) / (1 - 2 lam)
    u = 1 - 2 * lam
    log_c = np.where(np.abs(u) > 1e-3, np.log(2 * np.arctanh(np.where(np.abs(u) > 1e-3, u, 0.5))
                                                   / np.where(np.abs(u) > 1e-3, u, 0.5)),
                     np.log(2) + u**2 / 3)
    log_px = (x * np.log(lam) + (1 - x) * np.log1p(-lam) + log_c).sum(-1)
    log_pz = (-0.5 * z**2 - 0.5 * np.log(2 * np.pi)).sum(-1)
    log_qz = (-0.5 * ((z - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)).sum(-1)
    return (log_px + log_pz - log_qz).mean(0)  # per point


def test_vae_runs_with_the_amortised_guide(vae_result, digits64):
    res = vae_result
    z = res.idata.posterior["z"]
    assert z.shape[:2] == (1, 20) and z.shape[-1] == 2
    assert np.all(np.isfinite(z.values))
    d = res.diagnostics
    assert d["guide"] == "amortised" and len(d["elbo_trace"]) == SMALL_VAE["num_steps"]
    assert d["iwae_k"] == vae.IWAE_K
    for k in ("elbo", "iwae", "kl", "reconstruction", "amortisation_gap", "approximation_gap"):
        assert np.isfinite(d[k]), k
    assert d["elbo"] <= d["iwae"]  # same draws: mean of log w <= log mean of w (Jensen), per point
    assert d["kl"] > 0
    np.testing.assert_allclose(d["reconstruction"] - d["kl"], d["elbo"], atol=0.5)
    # the ELBO per point agrees with a numpy re-implementation within Monte Carlo error
    x = digits64["x"]
    ref = _np_elbo(x, d["networks"], 400, np.random.default_rng(1))
    se_ours = 5.0 / np.sqrt(vae.IWAE_K * len(x))  # log-weight sd is a few nats per point
    assert abs(ref.mean() - d["elbo"]) < 5 * se_ours + 0.05


def test_vae_bounds_are_ordered_in_expectation(vae_result, digits64):
    """ELBO <= IWAE_5 <= IWAE_50 in expectation, over 20 independent batches of draws."""
    nets = vae_result.diagnostics["networks"]
    x = torch.as_tensor(digits64["x"][:16], dtype=torch.float64)
    enc = vae.load_state(vae.Encoder(64, 2, 16).double(), nets["encoder"])
    dec = vae.load_state(vae.Decoder(2, 16, 64).double(), nets["decoder"])
    g = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        loc, scale = enc(x)
        for _ in range(20):
            elbo, iwae5 = vae.bounds(vae.log_weights(x, loc, scale, dec, "continuous_bernoulli", 5, g))
            _, iwae50 = vae.bounds(vae.log_weights(x, loc, scale, dec, "continuous_bernoulli", 50, g))
            rows.append([float(elbo.mean()), float(iwae5.mean()), float(iwae50.mean())])
    rows = np.array(rows)
    for lo, hi in ((0, 1), (1, 2)):
        diff = rows[:, hi] - rows[:, lo]
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        assert diff.mean() > -3 * se, (lo, hi, diff.mean(), se)
    assert rows[:, 2].mean() - rows[:, 0].mean() > 0  # strictly tighter on this model


def test_same_seed_same_elbo_trace(digits64):
    data = {"x": digits64["x"][:24]}
    opts = {**SMALL_VAE, "num_steps": 15}
    a = zoo.run("vae", "svi", data=data, seed=3, hyper={"hidden": 8}, **opts)
    b = zoo.run("vae", "svi", data=data, seed=3, hyper={"hidden": 8}, **opts)
    c = zoo.run("vae", "svi", data=data, seed=4, hyper={"hidden": 8}, **opts)
    assert a.diagnostics["elbo_trace"] == b.diagnostics["elbo_trace"]
    np.testing.assert_array_equal(a.draws("z"), b.draws("z"))
    assert a.diagnostics["elbo_trace"] != c.diagnostics["elbo_trace"]


def test_vae_simulate_does_not_depend_on_a_previous_fit(vae_result):
    a, ta = zoo.simulate("vae", seed=5, N=6)
    b, _tb = zoo.simulate("vae", seed=5, N=6)
    assert a["x"].shape == (6, 64) and ta["z"].shape == (6, 2)
    assert np.all((a["x"] >= 0) & (a["x"] <= 1))
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], zoo.simulate("vae", seed=6, N=6)[0]["x"])


@pytest.mark.parametrize("name", ["vae", "vrnn"])
def test_vectorised_log_density_matches_one_draw_at_a_time(name):
    data = zoo.simulate(name, seed=0, N=5)[0]
    problem = prepare(zoo.get_model(name), data)
    draws = sample_vectorised(problem, prior(problem), 3)
    log_joint, log_lik = log_densities(problem, draws)
    for i in range(3):
        with torch.no_grad():
            tr = poutine.trace(poutine.condition(problem.model, {"z": torch.as_tensor(draws["z"][i])})).get_trace()
            tr.compute_log_prob()
        np.testing.assert_allclose(log_joint[i], float(tr.log_prob_sum()), rtol=1e-9)
        np.testing.assert_allclose(log_lik["x"][i], tr.nodes["x"]["log_prob"].numpy(), rtol=1e-9)


def test_vrnn_runs_and_reports_per_step_terms(vrnn_result, vrnn_data):
    res = vrnn_result
    N, T, _P = vrnn_data["x"].shape
    z = res.idata.posterior["z"]
    assert z.shape == (1, 20, N, T, 2) and np.all(np.isfinite(z.values))
    d = res.diagnostics
    assert len(d["elbo_trace"]) == SMALL_VRNN["num_steps"] and d["guide"] == "amortised"
    elbo_t, kl_t = np.asarray(d["elbo_per_step"]), np.asarray(d["kl_per_step"])
    assert elbo_t.shape == (T,) and kl_t.shape == (T,)
    assert np.all(kl_t >= 0) and np.all(np.isfinite(elbo_t))
    assert d["elbo"] <= d["iwae"]
    # eq 6.10 with the analytic KL per step sums to the Monte Carlo ELBO (same draws; the
    # two differ by E[log p(z) - log q(z)] + KL, zero in expectation)
    assert abs(elbo_t.sum() - d["elbo"]) < 0.05 * abs(d["elbo"]) + 1.0


def test_vrnn_simulate_shapes_and_repeatability():
    a, ta = zoo.simulate("vrnn", seed=1, N=3, T=4, P=3)
    b, _ = zoo.simulate("vrnn", seed=1, N=3, T=4, P=3)
    assert a["x"].shape == (3, 4, 3) and ta["z"].shape == (3, 4, 2)
    np.testing.assert_array_equal(a["x"], b["x"])
    # with z held fixed, x is drawn step by step from the decoder
    c, tc = zoo.simulate("vrnn", seed=2, N=3, T=4, P=3, truth={"z": ta["z"]})
    np.testing.assert_array_equal(tc["z"], ta["z"])
    assert np.all(np.isfinite(c["x"]))


@pytest.mark.parametrize("name, backend", [("vae", "nuts"), ("vae", "exact"), ("vrnn", "hmc"),
                                           ("vrnn", "exact"), ("vae", "importance")])
def test_backends_that_do_not_apply_say_why(name, backend, digits64, vrnn_data):
    data = {"x": digits64["x"][:8]} if name == "vae" else vrnn_data
    with pytest.raises(zoo.ZooError, match="does not apply"):
        zoo.run(name, backend, data=data)


def test_bad_inputs_name_the_model_and_key(digits64):
    with pytest.raises(zoo.ZooError, match="vae.*x"):
        zoo.run("vae", "svi", data={"x": digits64["x"][:4] * 2})
    with pytest.raises(zoo.ZooError, match="vae.*hyperparameter d"):
        zoo.run("vae", "svi", data={"x": digits64["x"][:4]}, hyper={"d": 0})
    with pytest.raises(zoo.ZooError, match="vae.*hidden"):
        zoo.run("vae", "svi", data={"x": digits64["x"][:4]}, hyper={"hidden": 2.5})
    with pytest.raises(zoo.ZooError, match="vrnn.*x"):
        zoo.run("vrnn", "svi", data={"x": np.zeros((3, 4))})


def test_plots_are_written(vae_result, vrnn_result, tmp_path):
    files = vae.plot(vae_result, tmp_path / "vae") + vrnn.plot(vrnn_result, tmp_path / "vrnn")
    names = {f.name for f in files}
    assert {"reconstructions.png", "latent.png", "samples.png", "per_step.png"} <= names
    assert all(f.stat().st_size > 1000 for f in files)

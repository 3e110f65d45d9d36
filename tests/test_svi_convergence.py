"""Default SVI ends at the optimum for the posterior's own scale, and says when it did not.

The convergence rule (`zoo.inference.svi.Schedule`): Adam at a fixed rate until the ELBO stops
improving, then steps measured in the guide's own sds, and the run ends when the averaged
iterates stay put. The old rule ended at a fixed final rate of 0.001 whatever the posterior's
width, which left sblrc-blr's means (posterior sds about 0.001) 0.93 sd off.
"""
from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
from zoo.core.problem import float64, prepare
from zoo.inference import svi
from zoo.inference.common import optimiser_start
from zoo.inference.laplace import Laplace, laplace


def user_line(x, y=None):
    """A straight line written the way Pyro's tutorials write a regression."""
    X = torch.stack([torch.ones_like(x), x], -1)
    w = pyro.sample("w", dist.Normal(0., 100.).expand([2]).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(X @ w, 2.), obs=y)


def line_data() -> dict[str, np.ndarray]:
    """An unstandardised covariate (like an IQ near 100): the slope and intercept correlate
    at about -0.99."""
    rng = np.random.default_rng(0)
    x = 100 + 15 * rng.normal(size=50)
    return {"x": x, "y": 20 + 0.5 * x + 2 * rng.normal(size=50)}


def line_posterior(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The closed-form Gaussian posterior of `user_line`'s w: precision X'X / 4 + I / 100^2."""
    X = np.stack([np.ones_like(data["x"]), data["x"]], -1)
    precision = X.T @ X / 4 + np.eye(2) / 100**2
    return np.linalg.solve(precision, X.T @ data["y"] / 4), precision


def test_the_laplace_start_is_the_exact_posterior_of_a_gaussian_model():
    """svi's Gaussian guides start at the Laplace approximation (`inference.laplace`): on a
    Gaussian posterior it is the posterior itself (the MAP point is the mean, the inverse
    Hessian the covariance), whatever the correlation."""
    data = line_data()
    zoo.register("user_line", user_line, data=data, overwrite=True)
    with float64():
        problem = prepare(zoo.get_model("user_line"), data)
        start = laplace(problem, optimiser_start(problem, 0))
    assert isinstance(start, Laplace), start
    mean, precision = line_posterior(data)
    cov = np.linalg.inv(precision)
    assert abs(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])) > 0.98
    np.testing.assert_allclose(start.loc.numpy(), mean, rtol=0, atol=1e-6 * np.sqrt(np.diag(cov)).min())
    np.testing.assert_allclose(start.covariance.numpy(), cov, rtol=1e-6)


def user_two_groups(x):
    """Two groups at -mu and +mu with a shared noise sd, each point's group unknown: a
    discrete site per point, enumerated as Pyro's mixture tutorials do."""
    mu = pyro.sample("mu", dist.Normal(0., 10.))
    sigma = pyro.sample("sigma", dist.HalfNormal(5.))
    with pyro.plate("data", len(x)):
        group = pyro.sample("group", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(mu * (2 * group - 1), sigma), obs=x)


def test_the_laplace_start_sums_out_discrete_sites():
    """With a discrete site the Laplace start is that of the marginal posterior of the
    continuous sites (the groups summed out): its mode and the inverse Hessian of -log p on
    the unconstrained scale (mu, log sigma), against scipy's optimiser and central finite
    differences of the same density written in numpy."""
    from scipy import optimize, stats
    from scipy.special import logsumexp

    rng = np.random.default_rng(1)
    x = np.where(rng.random(60) < 0.3, 2.0, -2.0) + 0.8 * rng.normal(size=60)

    def minus_log_p(u):  # u = (mu, log sigma); log sigma's Jacobian is + log sigma
        mu, sigma = u[0], np.exp(u[1])
        lik = logsumexp([np.log(0.3) + stats.norm.logpdf(x, mu, sigma),
                         np.log(0.7) + stats.norm.logpdf(x, -mu, sigma)], axis=0).sum()
        return -(stats.norm.logpdf(mu, 0, 10) + stats.halfnorm.logpdf(sigma, scale=5) + u[1] + lik)

    mode = optimize.minimize(minus_log_p, [1.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
    h, eye = 1e-4, np.eye(2)
    hess = np.array([[(minus_log_p(mode + h * (eye[i] + eye[j])) - minus_log_p(mode + h * (eye[i] - eye[j]))
                       - minus_log_p(mode - h * (eye[i] - eye[j])) + minus_log_p(mode - h * (eye[i] + eye[j])))
                      / (4 * h * h) for j in range(2)] for i in range(2)])
    zoo.register("user_two_groups", user_two_groups, data={"x": x}, overwrite=True)
    with float64():
        problem = prepare(zoo.get_model("user_two_groups"), {"x": x})
        start = laplace(problem, {"mu": torch.tensor(1.0), "sigma": torch.tensor(1.0)})
    assert isinstance(start, Laplace), start
    np.testing.assert_allclose(start.loc.numpy(), mode, atol=1e-5)
    np.testing.assert_allclose(float(start.values["sigma"]), np.exp(mode[1]), rtol=1e-5)
    np.testing.assert_allclose(start.covariance.numpy(), np.linalg.inv(hess), rtol=1e-4)
    # enum starts there; the Bernoulli site's draws are conditioned as floats, as it draws them
    res = zoo.run("user_two_groups", "enum", seed=0, num_steps=200, num_samples=100)
    assert res.diagnostics["start"] == "laplace"
    assert set(np.unique(res.idata.posterior["group"].values)) == {0.0, 1.0}


def test_the_model_given_in_place_is_trained_with_discrete_sites_summed_out():
    """`svi.fit_guide`'s ``model`` (data-parallel SVI's shard of the data) replaces the
    problem's model in the ELBO when discrete sites are enumerated too: the ELBO traces it at
    every step (it trained on the problem's own model, tracing the one given only to build
    the guide)."""
    x = np.where(np.random.default_rng(1).random(60) < 0.3, 2.0, -2.0)
    zoo.register("user_two_groups", user_two_groups, data={"x": x}, overwrite=True)
    calls = []
    with float64():
        problem = prepare(zoo.get_model("user_two_groups"), {"x": x})

        def shard(*args, **kwargs):
            calls.append(1)
            return problem.model(*args, **kwargs)

        svi.fit_guide(problem, guide="mean_field", seed=0, num_steps=5, lr=0.05, lr_decay=1.0,
                      num_particles=1, progress=False, converge=False, model=shard)
    assert len(calls) >= 5, len(calls)


def test_default_svi_holds_the_means_of_a_strongly_correlated_posterior():
    """From the Laplace start, with its steps whitened by the Laplace covariance, default
    (mean-field) svi keeps the exact means (within 0.25 sd) and reaches the mean-field
    optimum's sds, 1 / sqrt(precision_ii) (within 10 %: the rule's tolerance for a scale),
    and says it converged. From the best prior draw, the same rule ran to the 10000-step cap
    on such posteriors (kidscore_interaction: 1.65 sd off)."""
    data = line_data()
    zoo.register("user_line", user_line, data=data, overwrite=True)
    res = zoo.run("user_line", "svi", seed=0)
    d = res.diagnostics
    assert d["start"] == "laplace" and d["converged"] is True and d["steps"] < 10000
    mean, precision = line_posterior(data)
    w = res.draws("w")
    sd = np.sqrt(np.diag(np.linalg.inv(precision)))
    assert np.all(np.abs(w.mean(0) - mean) / sd < 0.25), (w.mean(0), mean, sd)
    np.testing.assert_allclose(w.std(0), 1 / np.sqrt(np.diag(precision)), rtol=0.1)
    # full-rank: written in the Laplace start's whitened coordinates; its draws, and Pyro's
    # median() and quantiles() of the trained guide, are in the model's own
    with float64():
        problem = prepare(zoo.get_model("user_line"), data)
        trained = svi.fit_guide(problem, guide="full_rank", seed=0, progress=False, **{
            k: svi.SVI_OPTIONS[k] for k in ("num_steps", "lr", "lr_decay", "num_particles")})
        q = trained.guide
        pyro.set_rng_seed(0)
        with torch.no_grad():
            w = q.get_posterior().sample((4000,)).numpy()  # the latent vector is w (real support)
        median = q.median()["w"].detach().numpy()
        lower, upper = (v.detach().numpy() for v in q.quantiles([0.1587, 0.8413])["w"])
    assert trained.start == "laplace" and trained.converged is True
    assert np.all(np.abs(w.mean(0) - mean) / sd < 0.25) and np.allclose(w.std(0) / sd, 1, atol=0.1)
    assert np.all(np.abs(median - mean) / sd < 0.25) and np.allclose((upper - lower) / 2 / sd, 1, atol=0.1)


def test_svi_refuses_the_laplace_start_where_there_is_no_mode_and_says_why():
    """The centred eight schools' density grows without bound as tau -> 0 (the funnel's
    neck): no MAP point, so svi starts from the best prior draw as before, and says why."""
    with float64():
        problem = prepare(zoo.get_model("eight_schools_centered"), zoo.get_model("eight_schools_centered").example)
        why = laplace(problem, optimiser_start(problem, 0))
    assert isinstance(why, str) and "positive definite" in why
    res = zoo.run("eight_schools_centered", "svi", num_steps=200, num_samples=10, num_chains=1,
                  num_elbo_particles=10)
    assert res.diagnostics["start"] == f"best prior draw ({why})"


@pytest.mark.slow  # about 6600 + 5000 + 7600 SVI steps
def test_default_svi_reaches_the_optimum_on_sblrc_blr():
    """posteriordb's sblrc-blr: a Gaussian posterior whose coefficients have sds near 0.001
    and correlations near 0.8. A mean-field Gaussian cannot hold the correlations (its sds
    are about half the posterior's) but its optimum has the posterior's means exactly; the
    reference is posteriordb's (10 x 1000 Stan draws, MCSE below 0.01 sd). The old rule, a
    fixed schedule annealed to a rate of 0.001 (about the posterior sd), stops short of it.
    """
    cmp = zoo.compare("sblrc_blr", backends=["svi:mean_field"])
    res = cmp.results["svi:mean_field"]
    assert res.diagnostics["converged"] is True and res.diagnostics["steps"] < 10000
    z = cmp.scalars.set_index(["backend", "name"])["z"]
    assert z["svi:mean_field"].abs().max() < 0.25, z
    old = zoo.run("sblrc_blr", "svi", guide="mean_field", converge=False, num_steps=5000)
    beta = old.draws("beta")
    assert np.max(np.abs(beta.mean(0) - cmp.exact.mean["beta"]) / cmp.exact.sd["beta"]) > 0.25


def test_default_full_rank_svi_is_correct_on_sblrc_blr():
    """The model's default guide is full-rank (``SVI_OPTIONS``), which holds the correlations
    too: default svi is ``correct`` (|z| < 0.25 against posteriordb's reference, sd ratios
    0.9-1.1). The rule's earlier form, one rate for the locations and the log scales, left
    the scales hovering 5-8 % below the optimum (sd ratio 0.899 at seed 0); the scales now
    have their own rate, cut until they jitter by at most `svi.SCALE_JITTER`."""
    cmp = zoo.compare("sblrc_blr", backends=["svi"])
    row = cmp.table.set_index("backend").loc["svi"]
    assert cmp.results["svi"].diagnostics["guide"] == "full_rank" and bool(row["correct"]), row


def test_svi_is_scale_free():
    """The same Gaussian posterior at a scale 1000 times smaller (sd 2e-4): the rule measures
    the guide's steps in its own sds, so the answer is as good as at unit scale."""
    data, _ = zoo.simulate("normal_known_variance", seed=3, hyper={"sigma": 0.001, "mu0": 5.0, "sigma0": 1.0})
    cmp = zoo.compare("normal_known_variance", backends=["exact", "svi"], data=data,
                      hyper={"sigma": 0.001, "mu0": 5.0, "sigma0": 1.0})
    row = cmp.table.set_index("backend").loc["svi"]
    assert cmp.exact.sd["mu"] < 5e-4
    assert row["max_abs_z"] < 0.25 and 0.9 < row["sd_ratio_min"] <= row["sd_ratio_max"] < 1.1
    assert cmp.results["svi"].diagnostics["converged"] is True


def test_svi_says_when_it_stopped_at_the_step_cap():
    cmp = zoo.compare("bayesian_linear_regression", backends=["svi"], num_steps=300)
    res = cmp.results["svi"]
    assert res.diagnostics["converged"] is False and res.diagnostics["steps"] == 300
    note = cmp.table.set_index("backend").loc["svi", "note"]
    assert "not converged" in note and "num_steps=300" in note


def test_a_fixed_schedule_is_not_judged():
    res = zoo.run("beta_bernoulli", "svi", converge=False, num_steps=200, num_samples=50)
    assert res.diagnostics["converged"] is None and res.diagnostics["steps"] == 200
    assert "convergence not checked" in res.diagnostics["note"]


@pytest.mark.parametrize("guide", ["full_rank", "delta"])
def test_other_guides_converge_on_a_conjugate_model(guide):
    """full_rank is judged like mean_field (locations in its marginal sds); MAP (delta) has no
    scales and ends by the ELBO plateau and an anneal."""
    cmp = zoo.compare("bayesian_linear_regression", backends=["exact", f"svi:{guide}"])
    row = cmp.table.set_index("backend").loc[f"svi:{guide}"]
    assert cmp.results[f"svi:{guide}"].diagnostics["converged"] is True
    if guide == "full_rank":
        assert row["max_abs_z"] < 0.25 and 0.9 < row["sd_ratio_min"] <= row["sd_ratio_max"] < 1.1
    else:  # the MAP of a Gaussian posterior is its mean
        assert row["max_abs_z"] < 0.05


def test_the_convergence_rule_resumes_bit_identically(tmp_path, monkeypatch):
    """A run stopped in the middle of the rule's windows (rate cuts and kept window means;
    from the Laplace start there is no search) resumes from its checkpoint to the same steps
    and draws."""
    opts = {"num_samples": 20, "num_chains": 1, "num_elbo_particles": 20, "checkpoint_every": 50}
    fresh = zoo.run("normal_known_variance", "svi", seed=0, **opts)
    steps = fresh.diagnostics["steps"]
    # an odd checkpoint about 300 steps before the end: half-way through a window
    stop_at = (steps - 300) // 100 * 2 + 1
    saved = []
    save = svi.Checkpoint.save

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        saved.append(len(args[0]))
        if len(saved) == stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(svi.Checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        zoo.run("normal_known_variance", "svi", seed=0, checkpoint=str(tmp_path / "svi.pt"), **opts)
    monkeypatch.undo()
    assert fresh.diagnostics["start"] == "laplace"
    assert saved[-1] == 50 * stop_at and 300 <= saved[-1] < steps
    resumed = zoo.run("normal_known_variance", "svi", seed=0, checkpoint=str(tmp_path / "svi.pt"), **opts)
    assert resumed.diagnostics["elbo_trace"] == fresh.diagnostics["elbo_trace"]
    np.testing.assert_array_equal(resumed.draws("mu"), fresh.draws("mu"))


def test_a_compiled_elbo_resumes_bit_identically(tmp_path, monkeypatch):
    """The catalogue's mixtures train with Pyro's compiled ELBO (``jit``, `JIT_ELBO_ENUM`); a run
    killed after its first checkpoint resumes to the same ELBO trace and draws (the compiled
    function is traced again on resume and draws the same random numbers)."""
    assert zoo.get_model("gaussian_mixture").backends.options["enum"]["jit"] is True
    opts = {"converge": False, "num_steps": 300, "num_samples": 20, "num_chains": 1,
            "num_elbo_particles": 20, "checkpoint_every": 100, "progress": False}
    fresh = zoo.run("gaussian_mixture", "enum", seed=0, **opts)
    save = svi.Checkpoint.save

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(svi.Checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        zoo.run("gaussian_mixture", "enum", seed=0, checkpoint=str(tmp_path / "enum.pt"), **opts)
    monkeypatch.undo()
    resumed = zoo.run("gaussian_mixture", "enum", seed=0, checkpoint=str(tmp_path / "enum.pt"), **opts)
    assert resumed.diagnostics["elbo_trace"] == fresh.diagnostics["elbo_trace"]
    np.testing.assert_array_equal(resumed.draws("locs"), fresh.draws("locs"))

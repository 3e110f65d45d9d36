"""The ArviZ workflow on the zoo's results, each number against an independent computation.

- PSIS-LOO (``elpd_loo``, its se) on conjugate models against the exact leave-one-out
  predictive p(x_i | x_-i) from the closed form, within the Monte Carlo error of the draws.
- The guide's Pareto k (Yao et al. 2018) against the closed form k = 1 - c^2 of a Gaussian
  guide c times as wide as a Gaussian posterior: small for a wide guide, large for a narrow one.
- ``bfmi_min`` against the formula sum (E_n - E_n-1)^2 / sum (E_n - mean E)^2 on AR(1)
  energies, whose BFMI is 2 (1 - rho).
- Posterior and prior predictive draws against the closed-form predictive distributions.
- Named dims, deterministic sites, groups left out with a reason, netCDF round trip, model
  comparison and its CLI, quiet output.
The conformance suite (`tests/test_conformance.py`) runs every ArviZ function of the workflow
on every model x back-end.
"""
from __future__ import annotations

import logging
import math
import warnings

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import zoo
from zoo import cli, registry
from zoo.core.problem import prepare
from zoo.core.spec import Backend, Fit
from zoo.inference import svi
from zoo.inference.common import seed_all
from zoo.models import beta_bernoulli, normal_gamma, normal_known_variance
from zoo.results import execute

# ----------------------------------------------------------------------------- LOO


def _loo_normal_gamma(x, h):
    """log p(x_i | x_-i): the Normal-Gamma posterior predictive, a Student-t."""
    out = []
    for i in range(len(x)):
        mu_n, kappa_n, a_n, b_n = normal_gamma.posterior_params(np.delete(x, i), h["mu0"], h["kappa0"], h["a0"], h["b0"])
        scale = math.sqrt(b_n * (kappa_n + 1) / (a_n * kappa_n))
        out.append(stats.t.logpdf(x[i], 2 * a_n, mu_n, scale))
    return np.array(out)


def _loo_normal_known_variance(x, h):
    """log p(x_i | x_-i) = log Normal(x_i | mu_n, sigma^2 + sigma_n^2) from the other points."""
    out = []
    for i in range(len(x)):
        mu_n, sigma_n = normal_known_variance.posterior_params(np.delete(x, i), h["mu0"], h["sigma0"], h["sigma"])
        out.append(stats.norm.logpdf(x[i], mu_n, math.sqrt(h["sigma"] ** 2 + sigma_n**2)))
    return np.array(out)


def _loo_beta_bernoulli(y, h):
    """log p(y_i | y_-i): Bernoulli with p = (alpha + successes of the others) / (alpha + beta + N - 1)."""
    out = []
    for i in range(len(y)):
        a_n, b_n = beta_bernoulli.posterior_params(np.delete(y, i), h["alpha"], h["beta"])
        out.append(stats.bernoulli.logpmf(y[i], a_n / (a_n + b_n)))
    return np.array(out)


EXACT_LOO = {"normal_gamma": _loo_normal_gamma, "normal_known_variance": _loo_normal_known_variance,
             "beta_bernoulli": _loo_beta_bernoulli}


def _loo_mcse(log_lik):
    """Delta-method Monte Carlo standard errors of the importance-sampling LOO estimate from
    independent draws: the total's (the pointwise errors are correlated through the shared
    draws) and each point's. log_lik: (S, N)."""
    r = np.exp(-(log_lik - log_lik.min(0)))  # 1 / p(x_i | theta_s), rescaled per point
    mu = r.mean(0)
    total = (r / mu).sum(1).std(ddof=1) / math.sqrt(len(r))
    pointwise = r.std(0, ddof=1) / mu / math.sqrt(len(r))
    return total, pointwise


@pytest.mark.parametrize("name", list(EXACT_LOO))
def test_elpd_loo_is_the_exact_leave_one_out_predictive(name):
    data = zoo.simulate(name, seed=0)[0]
    res = zoo.run(name, "exact", data=data, seed=0, num_samples=1000, num_chains=4)
    problem = prepare(zoo.get_model(name), data)
    (obs,) = problem.observed
    exact = EXACT_LOO[name](np.asarray(data[obs], dtype=float), problem.np_hyper)
    log_lik = res.idata.log_likelihood[obs].values.reshape(-1, len(exact))
    total, pointwise = _loo_mcse(log_lik)
    d = res.diagnostics
    assert abs(d["elpd_loo"] - exact.sum()) < 4 * total, (d["elpd_loo"], exact.sum(), total)
    # se = sqrt(N var(elpd_i)): moved by at most the root sum of squares of the pointwise errors
    se = math.sqrt(len(exact) * np.var(exact))
    assert abs(d["elpd_loo_se"] - se) < 4 * math.sqrt(np.sum(pointwise**2)), (d["elpd_loo_se"], se)
    assert d["loo_k_bad"] == 0 and total < 0.05  # the tolerance is tight: a wrong predictive fails
    row = zoo.compare(name, backends=["exact"], data=data, num_samples=1000).table.iloc[0]
    assert row["elpd_loo"] == pytest.approx(d["elpd_loo"]) and row["loo_k_bad"] == 0


# ----------------------------------------------------------------------------- guide Pareto k


def _gaussian_guide_k(c, seed, num=100_000):
    """The zoo's Pareto k of a guide N(mean, (c sd)^2) against the exact Normal posterior."""
    data = zoo.simulate("normal_known_variance", seed=0)[0]
    problem = prepare(zoo.get_model("normal_known_variance"), data)
    post = problem.exact()
    loc = torch.tensor(float(post.mean["mu"]), dtype=torch.float64)
    scale = c * float(post.sd["mu"])

    def guide():
        pyro.sample("mu", dist.Normal(loc, scale))

    seed_all(seed)
    return svi.elbo_estimate(problem, guide, num)[2]


def test_guide_pareto_k_against_its_closed_form():
    """Weights w = p / q of a N(0, c^2) guide against a N(0, 1) target have a Pareto tail with
    k = 1 - c^2 for c < 1 (log w = (1 - c^2) chi2_1 / 2) and are bounded for c >= 1."""
    assert _gaussian_guide_k(1.0, 0, 1000) == -math.inf  # the posterior itself: constant weights
    assert _gaussian_guide_k(1.5, 0) < 0.5  # wider: bounded weights, k <= 0
    # narrower, k = 0.96; the estimator's bias is downward (measured over 20 seeds at 1e5
    # draws: mean 0.88, sd 0.06, smallest 0.78)
    assert _gaussian_guide_k(0.2, 0) > 0.7


def test_svi_reports_the_guide_pareto_k():
    """Mean field contains the Normal posterior of normal_known_variance: small k, no note."""
    cmp = zoo.compare("normal_known_variance", backends=["svi"], num_steps=1500, num_samples=500)
    row = cmp.table.iloc[0]
    assert row["pareto_k"] < 0.5 and "guide Pareto k" not in row["note"]
    assert cmp.results["svi"].kind == "independent"


# ----------------------------------------------------------------------------- BFMI


def _ar1(rng, rho, chains, draws):
    e = np.empty((chains, draws))
    e[:, 0] = rng.normal(size=chains) / math.sqrt(1 - rho**2)
    for t in range(1, draws):
        e[:, t] = rho * e[:, t - 1] + rng.normal(size=chains)
    return e


def _bfmi(energy):
    return np.sum(np.diff(energy, axis=1) ** 2, axis=1) / np.sum((energy - energy.mean(1, keepdims=True)) ** 2, axis=1)


def _fake_mcmc(problem, sample_stats):
    """A back-end returning exact draws as four 'chains' with the given sample statistics."""
    def fit(problem, seed):
        draws = problem.exact().sample(np.random.default_rng(seed), 4 * 1000)
        return Fit({k: v.reshape((4, 1000) + v.shape[1:]) for k, v in draws.items()}, sample_stats, kind="mcmc")
    return Backend(name="fake", fit=fit, options={})


def test_bfmi_min_is_the_formula():
    rng = np.random.default_rng(0)
    energy = np.concatenate([_ar1(rng, rho, 1, 1000) for rho in (0.2, 0.5, 0.8, 0.95)])
    problem = prepare(zoo.get_model("normal_known_variance"), zoo.simulate("normal_known_variance", seed=0)[0])
    res = execute(problem, _fake_mcmc(problem, {"energy": energy, "diverging": np.zeros((4, 1000), bool)}), {}, 0, "fake")
    assert res.diagnostics["bfmi_min"] == pytest.approx(_bfmi(energy).min(), rel=1e-12)
    assert res.plot_reason("energy") is None
    plt.close(res.plot("energy"))
    # the formula against the theory: E[(E_t - E_t-1)^2] / Var E = 2 (1 - rho) for AR(1)
    many = _bfmi(_ar1(rng, 0.8, 50, 2000))
    assert abs(many.mean() - 0.4) < 4 * many.std(ddof=1) / math.sqrt(len(many))
    row = zoo.scoring.table_row("fake", res, zoo.scoring.mixing(res.idata, ["mu"], "mcmc"), None)
    assert row["bfmi_min"] < 0.3 and "BFMI < 0.3" in row["note"]


def test_loo_pit_of_vector_observations_is_arviz_loo_pit_coordinate_by_coordinate():
    """ArviZ's loo_pit needs one PIT per log-likelihood entry; the zoo's path for observations
    that are vectors gives ArviZ's own numbers when each vector has one coordinate (one chain
    of independent draws, and Markov chains with their relative ESS)."""
    problem = prepare(zoo.get_model("normal_known_variance"), zoo.simulate("normal_known_variance", seed=0)[0])
    chains = execute(problem, _fake_mcmc(problem, {}), {}, 0, "fake")
    for res in (zoo.run("normal_known_variance", "exact", num_samples=500), chains):
        arrays = zoo.core.arviz_io.coordinate_pit(res.idata, "x")
        np.testing.assert_allclose(az.loo_pit(**arrays), az.loo_pit(res.idata, y="x"), rtol=1e-12)


def test_no_energy_no_bfmi_and_the_zoo_says_why():
    res = zoo.run("normal_known_variance", "exact", num_samples=100)
    assert "bfmi_min" not in res.diagnostics and "independent" in res.diagnostics["bfmi_note"]
    with pytest.raises(zoo.ZooError, match="no energy plot: .*Hamiltonian"):
        res.plot("energy")


# ----------------------------------------------------------------------------- predictive groups


def test_predictive_draws_are_the_closed_form_predictives():
    data = zoo.simulate("normal_known_variance", seed=0)[0]
    problem = prepare(zoo.get_model("normal_known_variance"), data)
    h = problem.np_hyper
    mu_n, sigma_n = normal_known_variance.posterior_params(data["x"], h["mu0"], h["sigma0"], h["sigma"])
    res = zoo.run("normal_known_variance", "exact", data=data, num_samples=1000, num_chains=4)
    post = res.idata.posterior_predictive["x"].values[0, :, 0]  # independent draws of one point
    assert stats.kstest(post, stats.norm(mu_n, math.hypot(h["sigma"], sigma_n)).cdf).pvalue > 1e-3
    prior = res.idata.prior_predictive["x"].values[0, :, 0]
    assert stats.kstest(prior, stats.norm(h["mu0"], math.hypot(h["sigma"], h["sigma0"])).cdf).pvalue > 1e-3
    assert stats.kstest(res.idata.prior["mu"].values.ravel(), stats.norm(h["mu0"], h["sigma0"]).cdf).pvalue > 1e-3
    assert res.idata.posterior_predictive["x"].dims == ("chain", "draw", "N")
    # the same seed gives the same replicated data
    again = zoo.run("normal_known_variance", "exact", data=data, num_samples=1000, num_chains=4)
    np.testing.assert_array_equal(again.idata.posterior_predictive["x"].values, res.idata.posterior_predictive["x"].values)


def test_replicated_mixture_data_draw_their_assignment_afresh():
    """The log-likelihood of a mixture sums the assignments out, so its replicated data must be
    the mixture predictive: a point's replicates fall in each component with the component's
    weight, not with the point's own responsibility (which is about 1 here)."""
    data, truth = zoo.simulate("gaussian_mixture", seed=0, N=100, D=1, hyper={"K": 2},
                               truth={"weights": [0.3, 0.7], "locs": [[-10.0], [10.0]], "scales": [[1.0], [1.0]]})
    res = zoo.run("gaussian_mixture", "em", data=data, hyper={"K": 2}, num_samples=1000, num_chains=2, restarts=1)
    weights = res.idata.posterior["weights"].values[0, 0]
    rep = res.idata.posterior_predictive["x"].values[0, :, :, 0]  # (draws, points)
    share = (rep < 0).mean(0)  # replicates in the left component, per point
    sd = math.sqrt(weights[0] * (1 - weights[0]) / rep.shape[0])
    assert np.all(np.abs(share - weights[0]) < 5 * sd), (share.min(), share.max(), weights[0])


@pytest.fixture
def own_registry(monkeypatch):
    """Models registered by a test stay in that test (other tests list the registry)."""
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))


def _schools(J, sigma, y=None):
    """Non-centred eight schools, as the Pyro tutorials write it."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", J):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


SCHOOLS = {"J": 8, "sigma": np.array([15.0, 10, 16, 11, 9, 11, 10, 18]), "y": np.array([28.0, 8, -3, 7, -1, 1, 18, 12])}


def test_user_model_dims_from_plates_and_deterministic_sites(own_registry):
    zoo.register("schools_arviz_test", _schools, data=SCHOOLS, overwrite=True)
    res = zoo.run("schools_arviz_test", "svi", num_steps=200, num_samples=100, num_chains=1, progress=False)
    post = res.idata.posterior
    assert post["eta"].dims == ("chain", "draw", "school") and post["theta"].dims == ("chain", "draw", "school")
    np.testing.assert_allclose(post["theta"].values, post["mu"].values[..., None] + post["tau"].values[..., None] * post["eta"].values)
    for group in ("observed_data", "log_likelihood", "posterior_predictive", "prior_predictive"):
        assert list(res.idata[group].data_vars) == ["y"], group  # the deterministic site is not data
    assert res.idata.log_likelihood["y"].dims == ("chain", "draw", "school")
    assert set(res.idata.constant_data.data_vars) == {"J", "sigma"}
    assert "theta" in res.idata.prior


def _regression(X, y=None, vectorised=True):
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    mean = pyro.deterministic("mean", (X * w.unsqueeze(-2)).sum(-1) if vectorised else X @ w)
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(mean, 1.0), obs=y)


@pytest.mark.parametrize("vectorised", [True, False], ids=["broadcasting", "matmul"])
def test_deterministic_sites_are_replayed_exactly_with_or_without_broadcasting(vectorised, own_registry):
    """``X @ w`` does not broadcast against Predictive's outer plate: the zoo replays it one
    draw at a time instead; both give X w at every draw."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    data = {"X": X, "y": X @ np.array([1.0, -1.0, 0.5]) + rng.normal(size=20)}
    model = (lambda X, y=None: _regression(X, y, True)) if vectorised else (lambda X, y=None: _regression(X, y, False))
    zoo.register("regression_arviz_test", model, data=data, overwrite=True)
    res = zoo.run("regression_arviz_test", "svi", num_steps=100, num_samples=50, num_chains=1, progress=False)
    w = res.idata.posterior["w"].values
    np.testing.assert_allclose(res.idata.posterior["mean"].values, np.einsum("nd,csd->csn", X, w), rtol=1e-10)
    assert res.idata.posterior_predictive["y"].shape == (1, 50, 20)


def _flat_prior(x=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0).mask(False))  # the flat-prior idiom
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def test_an_improper_prior_leaves_out_the_prior_groups_with_the_reason(own_registry):
    zoo.register("flat_arviz_test", _flat_prior, data={"x": np.array([0.3, -0.2, 1.1, 0.5])}, overwrite=True)
    res = zoo.run("flat_arviz_test", "svi", num_steps=100, num_samples=50, num_chains=1, progress=False)
    assert "prior" not in res.idata.groups() and "prior_predictive" not in res.idata.groups()
    assert "improper" in res.idata.attrs["no_prior"]
    with pytest.raises(zoo.ZooError, match="no prior_ppc plot: .*improper"):
        res.plot("prior_ppc")
    assert "posterior_predictive" in res.idata.groups()


# ----------------------------------------------------------------------------- honest kinds


def test_point_estimates_give_no_loo_and_say_why():
    res = zoo.run("gaussian_mixture", "em", num_samples=20, num_chains=2, restarts=1)
    assert res.kind == "point" and "log_likelihood" not in res.idata.groups()
    assert np.isnan(res.diagnostics["ess_bulk_min"]) and np.isnan(res.diagnostics["r_hat_max"])
    with pytest.raises(zoo.ZooError, match="no LOO: a point estimate"):
        res.loo()
    row = zoo.compare("gaussian_mixture", backends=["em"], restarts=1, num_samples=20).table.iloc[0]
    assert row["kind"] == "point" and np.isnan(row["elpd_loo"])


def test_local_rows_keep_log_likelihood_and_draws_consistent():
    """The VAE keeps 8 rows of z: its log-likelihood and replicated data are those 8 rows, and
    there is no LOO (no global latent: the networks are point estimates)."""
    res = zoo.run("vae", "svi", num_steps=20, num_samples=10, num_chains=2, num_elbo_particles=10, lr=0.01,
                  progress=False)
    rows = zoo.get_model("vae").scoring.local_rows
    assert res.idata.posterior["z"].sizes["N"] == rows
    assert res.idata.log_likelihood["x"].sizes["N"] == rows == res.idata.posterior_predictive["x"].sizes["N"]
    assert res.idata.observed_data["x"].sizes["N"] == 500  # the data stay whole
    with pytest.raises(zoo.ZooError, match="no global latent sites"):
        res.loo()
    plt.close(res.plot("ppc"))


def test_independent_draws_are_one_chain_with_ess_the_number_of_draws():
    res = zoo.run("normal_gamma", "cavi", num_samples=250, num_chains=4)
    assert res.kind == "independent" and res.idata.posterior.sizes["chain"] == 1
    assert res.diagnostics["ess_bulk_min"] == 1000 and np.isnan(res.diagnostics["r_hat_max"])
    with pytest.raises(zoo.ZooError, match="no rank plot: rank plots compare Markov chains"):
        res.plot("rank")


# ----------------------------------------------------------------------------- IO, plots, output


def test_netcdf_round_trip_keeps_every_group_dims_and_traces(tmp_path):
    res = zoo.run("gaussian_mixture", "svi", num_steps=60, num_samples=20, num_chains=2, progress=False)
    back = zoo.load(res.save(tmp_path / "r.nc"))
    assert set(back.idata.groups()) == set(res.idata.groups())
    for group in res.idata.groups():
        for var in res.idata[group].data_vars:
            assert back.idata[group][var].dims == res.idata[group][var].dims
            np.testing.assert_array_equal(back.idata[group][var].values, res.idata[group][var].values)
    assert back.idata.posterior["locs"].dims == ("chain", "draw", "component", "D")
    assert back.idata.sample_stats["elbo_trace"].dims == ("step",)
    assert back.diagnostics["elbo_trace"] == pytest.approx(res.diagnostics["elbo_trace"])
    assert "elbo_trace" not in back.idata.attrs["zoo"]  # an array in sample_stats, not JSON
    assert (back.kind, back.sites, back.diagnostics["elpd_loo"]) == (res.kind, res.sites, res.diagnostics["elpd_loo"])


def test_comparison_plots_and_files(tmp_path):
    cmp = zoo.compare("normal_gamma", backends=["exact", "hmc", "svi", "cavi"], num_samples=200, num_warmup=100,
                      num_steps=300, progress=False)
    fig = cmp.plot("density")
    assert "exact (closed-form density)" in [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)
    with pytest.raises(zoo.ZooError, match="name it, backend="):
        cmp.plot("trace")
    assert {p.name for p in cmp.plot(tmp_path)} == {"forest.png", "density.png", "elbo.png"}  # the older use
    files = {p.name for p in cmp.save_plots(tmp_path)}  # what compare --out writes
    assert {"forest.png", "density.png", "elbo.png", "trace_hmc.png", "rank_hmc.png", "pair_hmc.png",
            "ppc_svi.png", "loo_pit_exact.png", "prior_ppc.png"} <= files
    assert "rank_svi.png" not in files and "energy_svi.png" not in files
    assert all((tmp_path / f).stat().st_size > 10_000 for f in files)


def test_quiet_output(caplog):
    """No warning and no ArviZ log line reaches the user on a one-chain result. ArviZ 0.23 logs
    through a Logger of its own (``arviz._log``, not ``logging.getLogger("arviz")``, so caplog
    does not see it) that prints each message once per process: the draw count is one no other
    test uses, so its "Shape validation failed" line would be new here."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    az._log.addHandler(handler)
    try:
        with warnings.catch_warnings(), caplog.at_level(logging.INFO):
            warnings.simplefilter("error")
            res = zoo.run("normal_gamma", "exact", num_samples=203)
            assert res.idata.posterior.sizes["chain"] == 1
            res.summary()
            plt.close(res.plot("trace"))
            plt.close(res.plot("loo_pit"))
    finally:
        az._log.removeHandler(handler)
    assert not [r for r in caplog.records if r.name.startswith("arviz")]
    assert not seen, [r.getMessage() for r in seen]


# ----------------------------------------------------------------------------- model comparison


def test_compare_models_ranks_by_loo_against_the_exact_predictive():
    """Data with noise sd 1 under sigma = 1 (right) and sigma = 3 (wrong): the right model ranks
    first, elpd_diff is the exact LOO difference, and the stacking weights sum to one."""
    data = zoo.simulate("normal_known_variance", seed=1, N=40)[0]
    cmp = zoo.compare_models([("normal_known_variance", {"sigma": s}) for s in (3.0, 1.0)], backend="exact",
                             data=data, num_samples=1000)
    table = cmp.table
    assert list(table.index) == ["normal_known_variance(sigma=1.0)", "normal_known_variance(sigma=3.0)"]
    assert table["weight"].sum() == pytest.approx(1.0)
    exact = {s: _loo_normal_known_variance(data["x"], {"mu0": 0.0, "sigma0": 2.0, "sigma": s}).sum() for s in (1.0, 3.0)}
    mcse = math.hypot(*[_loo_mcse(cmp.results[k].idata.log_likelihood["x"].values.reshape(-1, 40))[0] for k in table.index])
    assert abs(table["elpd_diff"].iloc[1] - (exact[1.0] - exact[3.0])) < 4 * mcse
    assert table["elpd_loo"].iloc[0] == pytest.approx(cmp.results[table.index[0]].diagnostics["elpd_loo"])
    plt.close(cmp.plot())


def test_compare_models_refuses_what_it_cannot_compare():
    with pytest.raises(zoo.ZooError, match="two or more"):
        zoo.compare_models(["normal_gamma"])
    with pytest.raises(zoo.ZooError, match="more than once"):
        zoo.compare_models(["normal_gamma", "normal_gamma"], backend="exact")
    with pytest.raises(zoo.ZooError, match="no LOO: a point estimate"):
        zoo.compare_models([("gaussian_mixture", {"K": 1}), ("gaussian_mixture", {"K": 2})], backend="em",
                           num_samples=10, restarts=1)
    with pytest.raises(zoo.ZooError, match="model 'beta_bernoulli'"):  # the data do not fit it
        zoo.compare_models(["normal_gamma", "beta_bernoulli"], backend="exact")


def test_cli_compare_models(tmp_path, capsys):
    code = cli.main(["compare-models", "normal_known_variance:sigma=1.0", "normal_known_variance:sigma=3.0",
                     "--backend", "exact", "--num-samples", "200", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "normal_known_variance(sigma=1.0)" in out and "weight" in out
    assert (tmp_path / "compare.csv").exists() and (tmp_path / "compare.png").exists()
    assert cli.main(["compare-models", "normal_known_variance:sigma", "--backend", "exact"]) == 2


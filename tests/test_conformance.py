"""One conformance suite over every registered model x every back-end that applies to it.

A new model is tested here the moment its line is added to the registry, and the first test
fails if a module in `models/` is not registered.
"""
from __future__ import annotations

import pkgutil

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from pyro import poutine

import zoo
from zoo import models, registry, scoring
from zoo.core.problem import prepare
from zoo.results import RESULT_PLOTS
from zoo.inference.common import log_densities, prior, sample_vectorised

# Small settings: these tests check shapes, names and plumbing, not accuracy.
FAST = {
    "exact": {"num_samples": 50, "num_chains": 2},
    "nuts": {"num_samples": 20, "num_warmup": 20, "num_chains": 2},
    "hmc": {"num_samples": 20, "num_warmup": 20, "num_chains": 2, "num_leapfrog": 3},
    "svi": {"num_steps": 30, "num_samples": 50, "num_chains": 2, "num_elbo_particles": 100},
    "importance": {"num_steps": 30, "num_particles": 200, "num_samples": 50, "num_chains": 2},
    "cavi": {"num_samples": 50, "num_chains": 2},
}


SMALL_N = 12  # data size for back-ends a model leaves out of its default comparison as too slow
SMALL_DRAWS = 5  # and their draws: the plumbing is under test, not the sampler


def _fast(spec, backend):
    """Smoke-run options: the table above, else the back-end's own ``quick`` options."""
    if backend in FAST:
        return FAST[backend]
    return {"num_samples": 20, "num_chains": 2, **registry.get_backend(spec, backend).quick}


def _pairs():
    for name, spec in registry.MODELS.items():
        for backend in registry.backends_for(spec):
            yield pytest.param(name, backend, id=f"{name}-{backend}")


def _data(name):
    return zoo.simulate(name, seed=0)[0]


def test_every_model_module_is_registered():
    modules = {m.name for m in pkgutil.iter_modules(models.__path__) if not m.name.startswith("_")}
    registered = {m.__name__.split(".")[-1] for m in registry.MODULES}
    assert modules == registered, f"modules in models/ but not in zoo/registry.py: {modules - registered}"


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_spec_is_complete(name):
    spec = zoo.get_model(name)
    assert spec.name == name
    assert spec.doc and "Generative story" in spec.doc, "the model docstring tells the generative story"
    assert spec.seed_section, "the seed section of the notes is named"
    data, truth = zoo.simulate(name, seed=0)
    prepare(spec, data)  # raises if a declared latent site is missing
    assert set(spec.latent_sites) <= set(truth)
    assert set(k for k, v in spec.data.items() if not v.optional) <= set(data)


@pytest.mark.parametrize("name, backend", list(_pairs()))
def test_backend_returns_inference_data(name, backend):
    data = _data(name)
    problem = prepare(zoo.get_model(name), data)
    reason = registry.not_applicable(problem, registry.get_backend(problem.spec, backend))
    fast = _fast(problem.spec, backend)
    if backend in problem.spec.backends.skip_by_default:  # too slow at the default size: a small data set
        data = zoo.simulate(name, seed=0, N=SMALL_N)[0]
        problem = prepare(zoo.get_model(name), data)
        fast = {k: min(v, SMALL_DRAWS) if k in ("num_samples", "num_warmup") else v for k, v in fast.items()}
    if reason:
        with pytest.raises(zoo.ZooError, match="does not apply"):
            zoo.run(name, backend, data=data, **fast)
        return
    res = zoo.run(name, backend, data=data, seed=1, progress=False, **fast)
    assert res.model == name and res.backend == backend and res.seconds > 0
    assert set(res.idata.observed_data.data_vars) == set(problem.observed)
    if not problem.sites:  # a density model: no posterior to check
        return
    post = res.idata.posterior
    # Markov chains stay chains; independent, resampled or repeated draws are one chain
    chains = (2, fast["num_samples"]) if res.kind == "mcmc" else (1, 2 * fast["num_samples"])
    for site in problem.latent_sites:
        assert site in post, f"posterior lacks latent site {site}"
        assert post[site].dims[:2] == ("chain", "draw")
        shape = problem.sites[site].shape
        if problem.spec.scoring.local_rows is not None and site not in problem.spec.latent_sites:
            shape = (min(shape[0], problem.spec.scoring.local_rows),) + shape[1:]
        assert post[site].shape == chains + shape
        assert np.all(np.isfinite(post[site].values))
        assert not any(d.startswith(f"{site}_dim_") for d in post[site].dims), "every dimension is named"
    if res.kind == "point":  # a point estimate: no log-likelihood per draw, and the zoo says why
        assert "log_likelihood" not in res.idata.groups() and "point estimate" in res.idata.attrs["no_log_likelihood"]
    else:
        assert set(res.idata.log_likelihood.data_vars) == set(problem.observed)
    assert {"r_hat_max", "ess_bulk_min", "ess_tail_min"} <= set(res.diagnostics)
    check_arviz_workflow(res)


def check_arviz_workflow(res):
    """Every ArviZ function of the workflow runs on the result, or the zoo says why it does not
    apply: az.summary, ess, rhat, bfmi, loo, waic, compare and the plots (trace, rank, pair,
    energy, ppc, loo_pit, forest, through `Result.plot`)."""
    idata, d, sites = res.idata, res.diagnostics, res.sites
    az.summary(idata, var_names=sites)
    az.ess(idata, var_names=sites)
    rhat = az.rhat(idata, var_names=sites)
    spread = any(np.ptp(idata.posterior[v].values, axis=(0, 1)).max() > 0 for v in sites)
    if res.kind == "mcmc":
        assert not np.isnan(d["r_hat_max"])  # inf where a chain is stuck
        np.testing.assert_allclose(d["r_hat_max"], max(float(rhat[v].max()) for v in sites))
    else:  # no made-up chains: one chain, no r_hat, ESS the number of draws (or weight ESS, or none)
        assert idata.posterior.sizes["chain"] == 1 and np.isnan(d["r_hat_max"])
        draws = idata.posterior.sizes["draw"]
        expected = {"independent": draws, "resampled": min(draws, d.get("weight_ess", draws))}.get(res.kind, np.nan)
        np.testing.assert_allclose(d["ess_bulk_min"], expected if spread else np.nan)  # no spread: no ESS
    if "energy" in idata.get("sample_stats", {}):
        np.testing.assert_allclose(d["bfmi_min"], np.min(az.bfmi(idata)))
    else:
        assert d["bfmi_note"] and "bfmi_min" not in d
    observed = list(idata.observed_data.data_vars)
    if "elpd_loo" in d:
        for var in observed:
            az.loo(idata, var_name=var)
            az.waic(idata, var_name=var)
        if len(observed) == 1:
            np.testing.assert_allclose(d["elpd_loo"], az.loo(idata).elpd_loo)
        az.compare({"a": idata, "b": idata}, var_name=observed[0])
    else:
        with pytest.raises(zoo.ZooError, match="no LOO"):
            res.loo()
        assert d["loo_note"]
    for kind in RESULT_PLOTS:
        if kind in ("prior_ppc", "elbo", "density"):
            continue  # not ArviZ's list (and drawn by the comparison tests)
        reason = res.plot_reason(kind)
        if reason is None:
            fig = res.plot(kind)
            assert fig.texts or fig._suptitle, f"{kind} plot has no title"
            plt.close(fig)
        else:
            with pytest.raises(zoo.ZooError, match=f"no {kind} plot"):
                res.plot(kind)


@pytest.mark.parametrize("name", [n for n, s in registry.MODELS.items() if s.reference.exact is not None])
def test_exact_log_prob_is_the_model_posterior(name):
    """Bayes' rule with the Pyro model itself: log p(data, theta) - log p_exact(theta | data)
    is the same constant, the exact log evidence, at every theta."""
    problem = prepare(zoo.get_model(name), _data(name))
    post = problem.exact()
    if post is None or post.kind != "closed_form":
        pytest.skip(f"{name}: the reference is not a closed form ({post.kind if post else 'none here'})")
    draws = post.sample(np.random.default_rng(0), 5)
    log_joint, _ = log_densities(problem, draws)
    implied = [log_joint[i] - post.log_prob({k: v[i] for k, v in draws.items()}) for i in range(5)]
    np.testing.assert_allclose(implied, post.log_evidence, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_vectorised_log_density_equals_one_draw_at_a_time(name):
    """Back-ends evaluate the model for many draws at once under an outer plate; a model that
    indexes or broadcasts wrongly there (``p[..., arm]`` instead of ``Vindex``) shows here."""
    problem = prepare(zoo.get_model(name), _data(name))
    if not problem.sites:
        pytest.skip(f"{name} has no latent sites")
    draws = sample_vectorised(problem, prior(problem), 4)
    log_joint, log_lik = log_densities(problem, draws)
    for i in range(4):
        values = {k: torch.as_tensor(v[i]) for k, v in draws.items()}
        with torch.no_grad():  # a neural model's weights require grad
            tr = poutine.trace(poutine.condition(problem.model, values)).get_trace()
            tr.compute_log_prob()
        np.testing.assert_allclose(log_joint[i], float(tr.log_prob_sum()), rtol=1e-9)
        for site in problem.observed:
            np.testing.assert_allclose(log_lik[site][i], tr.nodes[site]["log_prob"].numpy(), rtol=1e-9)


@pytest.mark.parametrize("backend", [b for b in FAST if b != "cavi"])
def test_same_seed_same_draws(backend):
    data = _data("normal_known_variance")
    a = zoo.run("normal_known_variance", backend, data=data, seed=3, **FAST[backend])
    b = zoo.run("normal_known_variance", backend, data=data, seed=3, **FAST[backend])
    c = zoo.run("normal_known_variance", backend, data=data, seed=4, **FAST[backend])
    np.testing.assert_array_equal(a.draws("mu"), b.draws("mu"))
    assert not np.array_equal(a.draws("mu"), c.draws("mu"))


def test_simulate_is_reproducible():
    a, ta = zoo.simulate("bayesian_linear_regression", seed=5)
    b, tb = zoo.simulate("bayesian_linear_regression", seed=5)
    c, _ = zoo.simulate("bayesian_linear_regression", seed=6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(ta["w"], tb["w"])
    assert not np.array_equal(a["y"], c["y"])


def test_simulate_refuses_a_hyperparameter_as_a_size():
    with pytest.raises(zoo.ZooError, match="K is a hyperparameter"):
        zoo.simulate("bernoulli_bandit", K=5)


def test_simulate_sizes_and_truth():
    data, truth = zoo.simulate("normal_gamma", seed=0, N=7, truth={"mu": 3.0, "tau": 4.0})
    assert data["x"].shape == (7,)
    assert float(truth["mu"]) == 3.0


def test_compare_lists_inapplicable_backends_with_reason():
    data = zoo.simulate("bayesian_linear_regression", seed=0, hyper={"prior": "laplace"})[0]
    cmp = zoo.compare("bayesian_linear_regression", backends=["exact", "svi"], data=data,
                      hyper={"prior": "laplace"}, num_steps=50, num_samples=50)
    row = cmp.table.set_index("backend").loc["exact"]
    assert "Laplace prior has no closed-form posterior" in row["note"]
    assert list(cmp.results) == ["svi"]


def test_a_markov_chain_that_warns_is_not_recommended():
    """gp_pois_regr's hmc matched the reference with 10 divergent transitions and was the
    fastest correct row: the recommendation goes to the fastest row whose diagnostics are clean."""
    table = pd.DataFrame({
        "backend": ["nuts", "hmc", "hmc:long", "svi"], "kind": ["mcmc", "mcmc", "mcmc", "independent"],
        "seconds": [160.0, 13.0, 20.0, 30.0], "divergences": [0, 10, 0, 0],
        "r_hat_max": [1.004, 1.003, 1.02, float("nan")], "correct": [True, True, True, True]})
    assert scoring.recommend(table).set_index("backend")["recommended"].to_dict() == {
        "nuts": False, "hmc": False, "hmc:long": False, "svi": True}
    assert scoring.recommend(table.assign(correct=[True, True, True, False])).set_index(
        "backend")["recommended"].idxmax() == "nuts"


def test_recommended_is_the_fastest_correct_approximation():
    cmp = zoo.compare("normal_known_variance", backends=["exact", "svi", "importance"],
                      num_steps=300, num_samples=200, num_particles=2000, num_elbo_particles=100)
    table = cmp.table.set_index("backend")
    candidates = table[table["correct"].eq(True) & (table.index != "exact")]
    assert table["recommended"].sum() == (1 if len(candidates) else 0)
    if len(candidates):
        assert table["recommended"].idxmax() == candidates["seconds"].idxmin()

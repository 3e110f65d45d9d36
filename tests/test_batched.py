"""The batched multi-chain sampler (`inference.batched`, its potential `inference.potential`) and
the MCMC driver (`inference.mcmc`) against Pyro's own potential and kernel and against closed forms.

Its potential must equal Pyro's (value and gradient) on every model it runs, by both paths
(``vmap`` and ``plate``); a model it cannot run correctly falls back to Pyro's kernel with the
reason; its draws must pass the accuracy yardsticks of tests/test_accuracy.py (which run every
exact model's ``nuts`` through it by default). User models here are written the way the Pyro
tutorials write them (Python-float priors, which the zoo runs in float64).
"""
from __future__ import annotations

import importlib
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model
from scipy import stats

import zoo
from zoo import registry
from zoo.core.problem import DTYPE, float64, prepare
from zoo.inference import batched, common, mcmc, potential
from zoo.inference.common import chain_seeds, init_values, log_densities, prior, sample_vectorised

RUNNABLE = [n for n, s in registry.MODELS.items()
            if registry.not_applicable(prepare(s, zoo.simulate(n, seed=0)[0]), registry.BACKENDS["nuts"]) is None]


def _problem(name):
    return prepare(registry.get_model(name), zoo.simulate(name, seed=0)[0])


def _starts(problem, num=3):
    starts = [init_values(problem, s) for s in chain_seeds(0, num)]
    return {k: torch.stack([st[k] for st in starts]) for k in starts[0]}


def f64(value):
    return torch.tensor(value, dtype=torch.float64)


@pytest.mark.parametrize("name", RUNNABLE)
def test_both_paths_equal_pyros_potential(name):
    """U and dU/dz by each path (vmap, plate) at three prior draws other than the chains'
    starts, against Pyro's ``initialize_model`` potential."""
    problem = _problem(name)
    if problem.discrete_sites:
        assert "discrete" in potential.build(problem, {})
        return
    starts = _starts(problem)
    blocks = potential.blocks_of(problem, {k: v[0] for k, v in starts.items()})
    draws = {k: torch.as_tensor(v, dtype=DTYPE)
             for k, v in sample_vectorised(problem, prior(problem), 3).items() if k in problem.sites}
    ref_u, ref_grad = potential.pyro_potential(problem, blocks, draws, valid={k: v[0] for k, v in starts.items()})
    paths = []
    for path in potential.PATHS:
        pot = potential.Potential(problem, blocks, path)
        try:
            u, grad, _ = pot.robust(pot.unconstrain(draws))
        except (RuntimeError, ValueError):
            continue  # a model that does not broadcast: the plate path is refused at build time
        finite = torch.isfinite(ref_u)
        assert torch.equal(torch.isfinite(u), finite)
        np.testing.assert_allclose(u[finite].numpy(), ref_u[finite].numpy(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(grad[finite].numpy(), ref_grad[finite].numpy(), rtol=1e-7, atol=1e-9)
        paths.append(path)
    assert "vmap" in paths or name == "mvn_wishart", paths
    chosen = potential.build(problem, starts)
    assert chosen.path in paths and set(chosen.notes["potential_ms"]) == set(paths)


def test_flat_coordinates_are_dropped():
    """A DxD precision matrix has D(D+1)/2 free coordinates, not the D^2 of its lower-Cholesky
    square (whose upper triangle the transform ignores)."""
    problem = _problem("mvn_wishart")
    d = problem.sites["precision"].shape[-1]
    assert d > 1 and potential.build(problem, _starts(problem)).dim == d * (d + 1) // 2


def test_warmup_windows_are_stans():
    """Each chain's adapter re-estimates the metric at the ends of Stan's windows for 1000
    warm-up iterations (Stan reference manual, 15.2: 75 / 25, 50, 100, 200, 500 / 50)."""
    problem = _problem("normal_gamma")
    starts = _starts(problem, 2)
    pot = potential.build(problem, starts)
    tuning = batched.Tuning(pot, pot.unconstrain(starts), torch.Generator().manual_seed(0), num_warmup=1000,
                            target_accept=0.8, dense_mass=False)
    for adapter in tuning.adapters:
        windows = [(w.start, w.end + 1) for w in adapter.adaptation_schedule]
        assert windows[1:-1] == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
        assert windows[0] == (0, 75) and windows[-1] == (950, 1000)


# ----------------------------------------------------------------------------- user models


def logistic_regression(X, y=None):
    """The model of the Pyro tutorials (issue 14's case, Python-float priors): ``X @ w`` does
    not broadcast against an outer plate."""
    w = pyro.sample("w", dist.Normal(0., 1.).expand([X.shape[1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(0., 1.))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)


def _logistic_data(n=150, d=3, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    return {"X": X, "y": (rng.random(n) < 1 / (1 + np.exp(-(X @ w + 0.3)))).astype(float)}


def test_natural_logistic_regression_gives_pyros_answer():
    """``X @ w`` with the draws padded into an outer plate raises; the sampler used to turn
    that into an infinite potential, every draw divergent and the step size 1e-268. Now the
    vmap path runs it, and its means agree with Pyro's own NUTS within Monte Carlo error
    (|difference| < 5 sqrt(MCSE_zoo^2 + MCSE_pyro^2), Inference Gym's rule)."""
    zoo.register("engine_logistic", logistic_regression, data=_logistic_data(), overwrite=True)
    opts = {"num_samples": 300, "num_warmup": 300, "num_chains": 2, "seed": 0}
    res = zoo.run("engine_logistic", "nuts", **opts)
    assert res.diagnostics["sampler"] == "batched" and res.diagnostics["potential"] == "vmap"
    assert "plate" in res.diagnostics["refused_paths"]
    assert res.diagnostics["divergences"] == 0 and min(res.diagnostics["step_size"]) > 0.05
    ref = zoo.run("engine_logistic", "nuts", sampler="pyro", **opts)
    mine, theirs = res.summary(), ref.summary()
    gap = (mine["mean"] - theirs["mean"]).abs()
    assert (gap < 5 * np.hypot(mine["mcse_mean"], theirs["mcse_mean"])).all(), (mine, theirs)
    assert mine["r_hat"].max() < 1.02 and mine["ess_bulk"].min() >= 200


def test_posteriordb_sblrc_blr_matches_its_reference_posterior():
    """posteriordb's ``sblrc-blr`` (``X @ beta``, posterior correlations about 0.8): before
    the engine's potential check, nuts gave all 2000 draws divergent and r_hat 6e15. Now, at
    the defaults, every scalar meets DESIGN.md's yardsticks against posteriordb's reference
    draws (10 x 1000 from Stan): |z| < 0.25, sd ratio 0.9-1.1, r_hat < 1.01, bulk ESS >= 100
    per chain."""
    root = str(Path(__file__).resolve().parents[1])
    try:  # once installed as part of the zoo
        suite = importlib.import_module("zoo.posteriordb")
    except ImportError:
        sys.path.insert(0, root)
        suite = importlib.import_module("posteriordb")
    module = importlib.import_module(f"{suite.__name__}.sblrc_blr")
    zoo.register("engine_sblrc_blr", module.model, data=module.data(), overwrite=True)
    res = zoo.run("engine_sblrc_blr", "nuts", seed=0, progress=False)
    assert res.diagnostics["divergences"] == 0 and res.diagnostics["potential"] == "vmap"
    summary = res.summary()
    assert summary["r_hat"].max() < 1.01 and summary["ess_bulk"].min() >= 100 * res.idata.posterior.sizes["chain"]
    ref = json.loads((Path(suite.__file__).parent / "reference" / "sblrc_blr.json").read_text())
    for scalar in ref["scalars"]:
        x = res.draws(scalar["site"])[(slice(None), *scalar["index"])]
        assert abs(x.mean() - scalar["mean"]) / scalar["sd"] < 0.25, scalar["stan"]
        assert 0.9 < x.std(ddof=1) / scalar["sd"] < 1.1, scalar["stan"]


def summed_effects(y=None):
    """y ~ Normal(sum of three effects, 1): ``.sum()`` sums the outer plate's draws too."""
    effects = pyro.sample("effects", dist.Normal(f64(0.0), 1.0).expand([3]).to_event(1))
    pyro.sample("y", dist.Normal(effects.sum(), 1.0), obs=y)


def test_a_model_the_plate_gets_wrong_runs_by_vmap_and_matches_the_closed_form():
    """The plate path evaluates ``effects.sum()`` over every chain at once: a finite, wrong
    potential that the old sampler accepted. Checked against Pyro's it is refused; vmap runs
    the model, and the draws match the conjugate posterior: effects | y ~ Normal(m, S) with
    S = I - 11^T / 4, m = y 1 / 4."""
    zoo.register("engine_summed", summed_effects, data={"y": 2.0}, overwrite=True)
    res = zoo.run("engine_summed", "nuts", num_samples=1000, num_warmup=300, num_chains=2, seed=0)
    assert res.diagnostics["potential"] == "vmap"
    assert "differs from Pyro's" in res.diagnostics["refused_paths"]["plate"]
    draws = res.draws("effects").reshape(-1, 3)
    ess = float(res.summary()["ess_bulk"].min())
    assert ess >= 400
    np.testing.assert_allclose(draws.mean(0), np.full(3, 0.5), atol=5 * math.sqrt(0.75 / ess))
    np.testing.assert_allclose(draws.std(0), np.full(3, math.sqrt(0.75)), rtol=5 / math.sqrt(2 * ess))


def branching_effects(y=None):
    """The same sum, and a Python branch on its value: vmap cannot run it either."""
    effects = pyro.sample("effects", dist.Normal(f64(0.0), 1.0).expand([3]).to_event(1))
    total = effects.sum()
    scale = 2.0 if total.abs().item() > 50 else 1.0
    pyro.sample("y", dist.Normal(total, scale), obs=y)


def test_a_potential_no_path_gets_right_falls_back_to_pyros_kernel_with_the_reason():
    zoo.register("engine_branching", branching_effects, data={"y": 2.0}, overwrite=True)
    opts = {"num_samples": 30, "num_warmup": 30, "num_chains": 2}
    with pytest.warns(RuntimeWarning, match="batched sampler cannot run this model") as caught:
        res = zoo.run("engine_branching", "nuts", **opts)
    assert sum("batched sampler" in str(w.message) for w in caught) == 1
    assert res.diagnostics["sampler"] == "pyro" and res.diagnostics["potential"] == "pyro"
    reason = res.diagnostics["fallback"]
    assert "plate: potential" in reason and "differs from Pyro's" in reason and "vmap: RuntimeError" in reason
    with pytest.raises(zoo.ZooError, match="engine_branching.*batched sampler does not apply.*differs from Pyro's"):
        zoo.run("engine_branching", "nuts", sampler="batched", **opts)


def test_only_numerical_failures_become_an_infinite_potential(monkeypatch):
    """A failed Cholesky at one chain's point gives that chain an infinite potential and the
    others their values; any other error surfaces."""
    problem = _problem("normal_gamma")
    starts = _starts(problem, 3)
    pot = potential.build(problem, starts)
    z = pot.unconstrain(starts)
    expected = pot.eager(z)
    eager = pot.eager

    def cholesky_fails_at_chain_1(x):
        if torch.any(x[:, 0] == z[1, 0]):
            raise torch.linalg.LinAlgError("linalg.cholesky: the input is not positive-definite")
        return eager(x)

    monkeypatch.setattr(pot, "eager", cholesky_fails_at_chain_1)
    u, grad, _ = pot.robust(z)
    assert math.isinf(u[1]) and (grad[1] == 0).all()
    np.testing.assert_allclose(u[[0, 2]].numpy(), expected[0][[0, 2]].numpy())

    def shape_error(x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x1)")

    monkeypatch.setattr(pot, "eager", shape_error)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        pot.robust(z)
    assert mcmc.numerical_failure(torch.linalg.LinAlgError("x"))
    assert not mcmc.numerical_failure(RuntimeError("expected scalar type Double but found Float"))


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("backend, sampler", [("nuts", "batched"), ("nuts", "pyro"), ("hmc", "batched"),
                                              ("hmc", "pyro")])
def test_sample_stats_are_recorded_per_draw(backend, sampler):
    """Every MCMC run records lp, energy, diverging, tree_depth, step_size, n_steps and
    acceptance_rate as (chain, draw) arrays. lp is log p(data, latents) (against
    `log_densities`); energy is the potential at the draw (Pyro's) plus the kinetic energy of
    its momentum: in equilibrium the selected (z, p) follows the canonical distribution, so
    energy - U is chi-square(D)/2, mean D/2 and variance D/2."""
    res = zoo.run("normal_gamma", backend, sampler=sampler, num_samples=300, num_warmup=200, num_chains=2, seed=1)
    stats = res.idata.sample_stats
    assert set(mcmc.STATS) <= set(stats.data_vars)
    for k in mcmc.STATS:
        assert stats[k].shape == (2, 300), k
    problem = _problem("normal_gamma")
    draws = {k: res.idata.posterior[k].values.reshape((600,) + problem.sites[k].shape) for k in problem.sites}
    np.testing.assert_allclose(stats["lp"].values.reshape(-1), log_densities(problem, draws)[0], rtol=1e-9)
    _, potential_fn, transforms, _ = initialize_model(problem.model, max_plate_nesting=problem.max_plate_nesting)
    u = np.array([float(potential_fn({k: transforms[k](torch.as_tensor(v[i], dtype=DTYPE)) for k, v in draws.items()}))
                  for i in range(600)])
    kinetic = stats["energy"].values.reshape(-1) - u
    d = 2
    assert kinetic.min() > -1e-9
    assert abs(kinetic.mean() - d / 2) < 5 * math.sqrt(d / 2 / 600) * 2  # x2: draws are autocorrelated
    steps = stats["n_steps"].values
    if backend == "hmc":
        assert (steps == 10).all() and (stats["tree_depth"].values == 0).all()
    else:
        depth = stats["tree_depth"].values
        assert (steps >= 1).all() and (steps <= 2 ** depth - 1).all() and (steps > 2 ** (depth - 1) - 1).all()
    assert ((stats["acceptance_rate"].values >= 0) & (stats["acceptance_rate"].values <= 1)).all()
    np.testing.assert_allclose(stats["step_size"].values[:, -1], res.diagnostics["step_size"])
    assert stats["diverging"].values.sum() == res.diagnostics["divergences"]


def _exact_check(cmp, backend, z=0.25, ratio=(0.85, 1.15)):
    row = cmp.table.set_index("backend").loc[backend]
    assert row["ess_bulk_min"] >= 200
    assert row["max_abs_z"] < z and ratio[0] <= row["sd_ratio_min"] and row["sd_ratio_max"] <= ratio[1], row


@pytest.mark.slow
@pytest.mark.parametrize("backend, options", [
    ("hmc", {"num_samples": 600}),
    ("nuts", {"dense_mass": True}),
    ("nuts", {"sampler": "pyro", "num_chains": 1, "num_samples": 600}),
])
def test_sampler_variants_match_exact(backend, options):
    """Yardsticks of DESIGN.md (|z| < 0.25, sd ratio 0.85-1.15 at ESS >= 200) on the
    correlated posterior of bayesian_linear_regression."""
    cmp = zoo.compare("bayesian_linear_regression", backends=[backend],
                      options={backend: {"num_samples": 400, "num_warmup": 300, "num_chains": 2, **options}})
    _exact_check(cmp, backend)
    expected = options.get("sampler", "batched")
    assert cmp.results[backend].diagnostics["sampler"] == expected


def test_models_it_cannot_run_fall_back_or_say_why():
    data = zoo.simulate("gaussian_mixture", seed=0, N=12)[0]
    with warnings.catch_warnings():
        # discrete sites: Pyro's kernel, no fallback warning (5 draws do warn that chains have not mixed)
        warnings.filterwarnings("error", message=".*batched sampler", category=RuntimeWarning)
        res = zoo.run("gaussian_mixture", "nuts", data=data, num_samples=5, num_warmup=5, num_chains=1)
    assert res.diagnostics["sampler"] == "pyro" and "discrete" in res.diagnostics["fallback"]
    with pytest.raises(zoo.ZooError, match="gaussian_mixture.*batched sampler does not apply.*discrete"):
        zoo.run("gaussian_mixture", "nuts", data=data, sampler="batched")


def test_same_seed_same_draws_and_chains_differ():
    a = zoo.run("normal_gamma", "nuts", num_samples=30, num_warmup=30, seed=3)
    b = zoo.run("normal_gamma", "nuts", num_samples=30, num_warmup=30, seed=3)
    mu = a.idata.posterior["mu"].values
    np.testing.assert_array_equal(mu, b.idata.posterior["mu"].values)
    assert not np.allclose(mu[0], mu[1])


def test_ctrl_c_while_sampling_returns_the_draws_so_far(monkeypatch):
    compile_step = batched.compile_step

    def interrupted_after_400_steps(*args, **kwargs):
        graph, calls = compile_step(*args, **kwargs), {"n": 0}

        def step(*values):
            calls["n"] += 1
            if calls["n"] == 400:
                raise KeyboardInterrupt
            return graph(*values)
        return step

    monkeypatch.setattr(batched, "compile_step", interrupted_after_400_steps)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        res = zoo.run("normal_gamma", "nuts", num_samples=10_000, num_warmup=20, seed=0)
    draws = res.idata.posterior.sizes["draw"]
    assert 0 < draws < 10_000 and res.idata.posterior.sizes["chain"] == 4


# ----------------------------------------------------------------------------- many draws


def test_log_densities_of_a_model_written_for_one_draw_run_by_vmap():
    """`log_densities` of the ``X @ w`` regression: decided once (the plate raises), by vmap,
    equal to one draw at a time and to a closed form of the Bernoulli likelihood."""
    data = _logistic_data(n=400, d=4)
    zoo.register("engine_logistic_many", logistic_regression, data=data, overwrite=True)
    problem = prepare(zoo.get_model("engine_logistic_many"), data)
    with float64():  # as every zoo entry point does: the model's Python-float priors in float64
        draws = sample_vectorised(problem, prior(problem), 50)
        log_joint, log_lik = log_densities(problem, draws)
    mode, why = common.evaluation(problem)
    assert mode == "vmap" and why.startswith("plate: RuntimeError")
    logits = draws["w"] @ data["X"].T + draws["b"][:, None]
    expected = data["y"] * logits - np.logaddexp(0, logits)
    np.testing.assert_allclose(log_lik["y"], expected, rtol=1e-10, atol=1e-10)
    prior_lp = stats.norm.logpdf(draws["w"]).sum(1) + stats.norm.logpdf(draws["b"])
    np.testing.assert_allclose(log_joint, expected.sum(1) + prior_lp, rtol=1e-10)


def test_an_error_at_run_time_surfaces(monkeypatch):
    """Once the plate is chosen, an error while evaluating draws propagates: no silent switch
    to one draw at a time."""
    problem = _problem("normal_gamma")
    draws = sample_vectorised(problem, prior(problem), 20)
    assert common.evaluation(problem)[0] == "plate"
    chunk = common._log_density_chunk

    def fails_vectorised(problem, draws, start, n, mode):
        if mode == "plate":
            raise RuntimeError("The size of tensor a (20) must match the size of tensor b (3)")
        return chunk(problem, draws, start, n, mode)

    monkeypatch.setattr(common, "_log_density_chunk", fails_vectorised)
    with pytest.raises(RuntimeError, match="must match the size"):
        log_densities(problem, draws)

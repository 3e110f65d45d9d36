"""The batched multi-chain sampler (`inference.batched`) against Pyro and closed forms.

Its potential must equal Pyro's own potential (value and gradient) on every model it runs,
its warm-up windows must be Stan's, and its draws must pass the accuracy yardsticks of
tests/test_accuracy.py (which run every exact model's ``nuts`` through it by default); the
checks here cover the parts those do not: HMC, the dense mass matrix, Pyro's kernel still
selectable, the fallback for models it cannot run, and Ctrl-C.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model

import zoo
from zoo import registry
from zoo.core.problem import DTYPE, prepare
from zoo.inference import batched
from zoo.inference.common import prior, sample_vectorised

RUNNABLE = [n for n, s in registry.MODELS.items()
            if registry.not_applicable(prepare(s, zoo.simulate(n, seed=0)[0]), registry.BACKENDS["nuts"]) is None]


def _problem(name):
    return prepare(registry.get_model(name), zoo.simulate(name, seed=0)[0])


@pytest.mark.parametrize("name", RUNNABLE)
def test_potential_equals_pyros(name):
    """U and dU/dz at three prior draws, against Pyro's ``initialize_model`` potential."""
    problem = _problem(name)
    pot = batched.BatchedPotential.build(problem)
    if isinstance(pot, str):
        assert problem.discrete_sites and "discrete" in pot
        return
    draws = sample_vectorised(problem, prior(problem), 3)
    values = {k: torch.as_tensor(v, dtype=DTYPE) for k, v in draws.items()}
    u, grad = pot(pot.unconstrain(values))
    _, potential_fn, transforms, _ = initialize_model(problem.model, max_plate_nesting=problem.max_plate_nesting)
    for i in range(3):
        # Pyro's transforms map constrained values to the unconstrained space
        params = {k: transforms[k](values[k][i]).detach().requires_grad_(True) for k in problem.sites}
        ref = potential_fn(params)
        ref_grad = torch.autograd.grad(ref, list(params.values()), allow_unused=True)
        flat = []
        for block, g in zip(pot.blocks, ref_grad):
            g = torch.zeros(block.ushape, dtype=DTYPE) if g is None else g
            g = g.reshape(-1)
            flat.append(g if block.used is None else g[block.used])
        if not torch.isfinite(ref):
            assert not torch.isfinite(u[i])
            continue
        assert float(u[i]) == pytest.approx(ref.item(), rel=1e-9, abs=1e-9)
        np.testing.assert_allclose(grad[i].numpy(), torch.cat(flat).numpy(), rtol=1e-7, atol=1e-9)


def test_flat_coordinates_are_dropped():
    """A DxD precision matrix has D(D+1)/2 free coordinates, not the D^2 of its lower-Cholesky
    square (whose upper triangle the transform ignores)."""
    problem = _problem("mvn_wishart")
    d = problem.sites["precision"].shape[-1]
    assert d > 1 and batched.BatchedPotential.build(problem).dim == d * (d + 1) // 2


def test_warmup_windows_are_stans():
    """Stan's adaptation windows for 1000 warm-up iterations (Stan reference manual, 15.2)."""
    assert batched.windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert batched.windows(100) == [(15, 90)]
    assert batched.windows(10) == []


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
    res = zoo.run("gaussian_mixture", "nuts", data=data, num_samples=5, num_warmup=5, num_chains=1)
    assert res.diagnostics["sampler"] == "pyro"
    with pytest.raises(zoo.ZooError, match="gaussian_mixture.*batched sampler does not apply.*discrete"):
        zoo.run("gaussian_mixture", "nuts", data=data, sampler="batched")


def test_same_seed_same_draws_and_chains_differ():
    a = zoo.run("normal_gamma", "nuts", num_samples=30, num_warmup=30, seed=3)
    b = zoo.run("normal_gamma", "nuts", num_samples=30, num_warmup=30, seed=3)
    mu = a.idata.posterior["mu"].values
    np.testing.assert_array_equal(mu, b.idata.posterior["mu"].values)
    assert not np.allclose(mu[0], mu[1])


def test_ctrl_c_while_sampling_returns_the_draws_so_far(monkeypatch):
    call = batched.BatchedPotential.__call__
    calls = {"n": 0}

    def interrupted(pot, z):
        calls["n"] += 1
        if calls["n"] == 400:
            raise KeyboardInterrupt
        return call(pot, z)

    monkeypatch.setattr(batched.BatchedPotential, "__call__", interrupted)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        res = zoo.run("normal_gamma", "nuts", num_samples=10_000, num_warmup=20, seed=0)
    draws = res.idata.posterior.sizes["draw"]
    assert 0 < draws < 10_000 and res.idata.posterior.sizes["chain"] == 4

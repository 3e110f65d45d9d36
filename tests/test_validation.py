"""Every bad input gets a ZooError naming the model, the key or site and the value, under
every back-end, before any inference starts."""
from __future__ import annotations

import time

import numpy as np
import pytest

import zoo
from zoo import registry

GENERIC = list(registry.BACKENDS)


def _data(name, **changes):
    data = zoo.simulate(name, seed=0)[0]
    data.update(changes)
    return data


# (model, data changes, hyper, substrings the message must contain)
BAD_DATA = [
    ("beta_bernoulli", {"y": [0, 1, 2, 1]}, None, ["beta_bernoulli", "y", "2.0", "support"]),
    ("beta_bernoulli", {"y": [0, 1, np.nan]}, None, ["beta_bernoulli", "y", "NaN", "2"]),
    ("normal_gamma", {"x": [0.1, np.inf]}, None, ["normal_gamma", "x", "inf"]),
    ("poisson_gamma", {"x": [1, 2, -3]}, None, ["poisson_gamma", "x", "-3"]),
    ("poisson_gamma", {"x": [1, 2.5]}, None, ["poisson_gamma", "x", "2.5"]),
    ("uniform_pareto", {"x": [0.5, 0.0, 2.0]}, None, ["uniform_pareto", "x", "0.0"]),
    ("uniform_pareto", {"x": [0.5, -1.0]}, None, ["uniform_pareto", "x", "-1.0"]),
    ("dirichlet_categorical", {"x": [0, 1, 3]}, None, ["dirichlet_categorical", "x", "3"]),
    ("dirichlet_categorical", {"x": [0, 1, -1]}, None, ["dirichlet_categorical", "x", "-1"]),
    ("dirichlet_categorical", {"x": [0, 1.5]}, None, ["dirichlet_categorical", "x", "1.5", "integers"]),
    ("normal_gamma", {"x": [[1.0, 2.0]]}, None, ["normal_gamma", "x", "shape", "(1, 2)"]),
    ("normal_gamma", {"x": []}, None, ["normal_gamma", "x", "empty"]),
    ("normal_gamma", {"x": "abc"}, None, ["normal_gamma", "x", "numeric"]),
    ("mvn_wishart", {"x": np.ones((5, 3))}, None, ["mvn_wishart", "x", "D=3"]),
    ("bayesian_linear_regression", {"y": np.ones(7)}, None, ["bayesian_linear_regression", "y", "N=7"]),
    ("bayesian_linear_regression", {"X": np.ones(50)}, None, ["bayesian_linear_regression", "X", "shape"]),
]

BAD_HYPER = [
    ("beta_bernoulli", {"alpha": -1.0}, ["beta_bernoulli", "alpha", "-1.0"]),
    ("beta_bernoulli", {"alpah": 1.0}, ["beta_bernoulli", "alpah", "did you mean 'alpha'"]),
    ("normal_gamma", {"kappa0": 0.0}, ["normal_gamma", "kappa0", "0.0"]),
    ("normal_gamma", {"mu0": float("nan")}, ["normal_gamma", "mu0", "NaN"]),
    ("normal_gamma", {"a0": [1.0, 2.0]}, ["normal_gamma", "a0", "dimension"]),
    ("dirichlet_categorical", {"alpha": [1.0, -2.0, 1.0]}, ["dirichlet_categorical", "alpha", "-2.0"]),
    ("mvn_wishart", {"W0": [[1.0, 2.0], [2.0, 1.0]]}, ["mvn_wishart", "W0", "support"]),
    ("bayesian_linear_regression", {"prior": "cauchy"}, ["bayesian_linear_regression", "prior", "cauchy", "laplace"]),
]


@pytest.mark.parametrize("backend", GENERIC)
@pytest.mark.parametrize("name, changes, hyper, words", BAD_DATA)
def test_bad_data_raises_before_inference(name, changes, hyper, words, backend):
    start = time.perf_counter()
    with pytest.raises(zoo.ZooError) as err:
        zoo.run(name, backend, data=_data(name, **changes), hyper=hyper)
    for w in words:
        assert w in str(err.value), f"{w!r} not in: {err.value}"
    assert time.perf_counter() - start < 5, "validation must come before any long work"


@pytest.mark.parametrize("backend", GENERIC)
@pytest.mark.parametrize("name, hyper, words", BAD_HYPER)
def test_bad_hyper_raises(name, hyper, words, backend):
    with pytest.raises(zoo.ZooError) as err:
        zoo.run(name, backend, data=_data(name), hyper=hyper)
    for w in words:
        assert w in str(err.value), f"{w!r} not in: {err.value}"


def test_missing_and_unknown_data_keys():
    with pytest.raises(zoo.ZooError, match="missing data key 'y'"):
        zoo.run("bayesian_linear_regression", "exact", data={"X": np.ones((3, 2))})
    with pytest.raises(zoo.ZooError, match="unknown data key 'xx'.*did you mean 'x'"):
        zoo.run("normal_gamma", "exact", data={"x": [1.0], "xx": [2.0]})
    with pytest.raises(zoo.ZooError, match="dict of named arrays"):
        zoo.run("normal_gamma", "exact", data=[1.0, 2.0])


def test_unknown_model_and_backend_suggest_closest():
    with pytest.raises(zoo.ZooError, match="unknown model 'normal_gama'.*did you mean 'normal_gamma'"):
        zoo.run("normal_gama", "exact")
    with pytest.raises(zoo.ZooError, match="unknown back-end 'nut'.*did you mean 'nuts'.*Valid: .*cavi"):
        zoo.run("normal_gamma", "nut")
    with pytest.raises(zoo.ZooError, match="'cavi' does not apply: it is specific to normal_gamma"):
        zoo.run("beta_bernoulli", "cavi")


def test_inapplicable_backend_says_why_and_which_apply():
    with pytest.raises(zoo.ZooError, match="Laplace prior has no closed-form.*apply: nuts, hmc, svi, importance"):
        zoo.run("bayesian_linear_regression", "exact", hyper={"prior": "laplace"})


@pytest.mark.parametrize("backend", ["svi", "enum", "importance"])
def test_the_laplace_guide_is_refused_where_discrete_sites_are_summed_out(backend):
    """Pyro's laplace_approximation forms the Hessian on a replay that samples the assignments
    (on this model it raised a bare LinAlgError; where that Hessian happens to be positive
    definite it would be the curvature of another function). Refused before any training."""
    with pytest.raises(zoo.ZooError, match=f"'gaussian_mixture', back-end '{backend}'.*guide 'laplace'.*assignment"):
        zoo.run("gaussian_mixture", backend, guide="laplace")


@pytest.mark.parametrize("backend, options, words", [
    ("nuts", {"num_samples": 0}, ["num_samples", "positive integer", "0"]),
    ("nuts", {"num_chains": -2}, ["num_chains", "-2"]),
    ("hmc", {"num_warmup": 2.5}, ["num_warmup", "2.5"]),
    ("svi", {"num_steps": 0}, ["num_steps", "0"]),
    ("svi", {"lr": -0.1}, ["lr", "-0.1"]),
    ("svi", {"guide": "full_rnak"}, ["guide", "full_rnak", "did you mean 'full_rank'"]),
    ("importance", {"proposal": "posterior"}, ["proposal", "posterior", "prior"]),
    ("importance", {"num_particles": True}, ["num_particles", "True"]),
    ("exact", {"num_warmup": 10}, ["option", "num_warmup"]),
    ("nuts", {"target_accept": 1.5}, ["target_accept", "1.5"]),
    ("nuts", {"checkpoint": 5}, ["checkpoint", "must be a string", "5"]),
    ("nuts", {"sampler": "stan"}, ["sampler", "stan", "batched"]),
])
def test_bad_options(backend, options, words):
    with pytest.raises(zoo.ZooError) as err:
        zoo.run("normal_gamma", backend, **options)
    for w in ["normal_gamma", backend] + words:
        assert w in str(err.value), f"{w!r} not in: {err.value}"


def test_bad_seed_and_sizes():
    with pytest.raises(zoo.ZooError, match="seed"):
        zoo.run("normal_gamma", "exact", seed=-1)
    with pytest.raises(zoo.ZooError, match="size N must be a positive integer, got 0"):
        zoo.simulate("normal_gamma", N=0)


def test_compare_validates_everything_before_running():
    start = time.perf_counter()
    with pytest.raises(zoo.ZooError, match="guide"):
        zoo.compare("normal_gamma", backends=["nuts", "svi"], options={"svi": {"guide": "nope"}})
    with pytest.raises(zoo.ZooError, match="num_stpes"):
        zoo.compare("normal_gamma", backends=["nuts", "svi"], num_stpes=10)
    assert time.perf_counter() - start < 5


def test_nan_elbo_stops_svi():
    import pyro
    import pyro.distributions as dist
    import torch

    def broken(y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        # fine when traced for validation (no gradients), NaN in the ELBO
        pyro.factor("nan", mu * (float("nan") if torch.is_grad_enabled() else 0.0))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    zoo.register("broken_nan", broken, data={"y": [0.1, 0.2]}, overwrite=True)
    with pytest.raises(zoo.InferenceError, match="broken_nan.*svi.*ELBO became nan at step 0"):
        zoo.run("broken_nan", "svi", num_steps=10)

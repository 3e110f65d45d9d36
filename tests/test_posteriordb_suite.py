"""The posteriordb suite in the zoo: registered through zoo.register like a user's model,
listed by where it comes from, and scored against its stored reference.

Stored references are summaries of reference draws (posteriordb's long Stan runs, or
NumPyro's for the two posteriors posteriordb has none for), so a back-end is scored by |z|
and sd ratio against them, allowing for the reference's own Monte Carlo error (Inference
Gym's 5 sqrt(SE^2 + SE_ref^2)), and with no Wasserstein distance (no draws to measure it by).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
from scipy import stats

import zoo
from zoo import registry
from zoo.core.problem import prepare
from zoo.core.spec import Fit, StoredReference
from zoo.inference import reparam
from zoo.inference.common import chain_seeds, init_values
from zoo.posteriordb import MODULES, suite

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.posteriordb_suite import COLUMNS, merged  # noqa: E402


def test_every_suite_model_is_listed_by_source_without_being_registered_yet():
    catalogue = [m.SPEC.name for m in registry.MODULES]
    assert zoo.list_models(source="posteriordb") == MODULES
    assert zoo.list_models(source="catalogue") == catalogue
    assert set(zoo.list_models()) == set(MODULES) | set(catalogue) | set(zoo.list_models(source="user"))
    table = zoo.catalogue().set_index("name")
    assert list(table.columns) == ["source", "kind", "description"]
    assert table.loc["wells_dist", "kind"] == "logistic regression"
    assert table.loc["beta_bernoulli", ["source", "kind"]].tolist() == ["catalogue", "conjugate"]
    assert all(registry.ships_with_zoo(n) for n in MODULES)


def test_a_suite_model_registers_through_zoo_register_on_first_use():
    spec = zoo.get_model("kilpisjarvi")
    assert spec.source == "posteriordb" and spec.kind == suite.SUITE["kilpisjarvi"].KIND
    assert spec.backends.options["nuts"] == suite.SUITE["kilpisjarvi"].NUTS_OPTIONS  # its geometry's defaults
    assert spec.backends.options["nuts"]["dense_mass"] is True
    assert set(spec.example) == set(suite.SUITE["kilpisjarvi"].data())
    with pytest.raises(zoo.ZooError, match="built-in model"):
        zoo.register("kilpisjarvi", suite.SUITE["kilpisjarvi"].model, suite.SUITE["kilpisjarvi"].data())


def test_the_stored_reference_belongs_to_the_shipped_data_only():
    data = suite.SUITE["wells_dist"].data()
    exact = zoo.compare("wells_dist", backends=["svi"], num_steps=100, num_samples=20).exact
    assert exact is not None and exact.kind == "numpyro" and exact.sample is None
    data["switched"] = data["switched"][::-1].copy()
    cmp = zoo.compare("wells_dist", backends=["svi"], data=data, num_steps=100, num_samples=20)
    assert cmp.exact is None and "max_abs_z" not in cmp.table


def normal_mean(x=None):
    mu = pyro.sample("mu", dist.Normal(0., 1.))
    with pyro.plate("data", 10):
        pyro.sample("x", dist.Normal(mu, 1.), obs=x)


@pytest.mark.parametrize("mcse_ref, passes", [(0.1, True), (0.001, False)])
def test_the_reference_mcse_is_allowed_for(mcse_ref, passes):
    """A user's model with a stored reference 0.3 posterior sd off the exact posterior
    (N(sum x / 11, 1 / 11)): with a reference MCSE of 0.1 sd the difference is within its
    Monte Carlo noise and SVI passes; with 0.001 sd it is not, and SVI fails the 0.25 gate."""
    x = np.random.default_rng(0).normal(1.0, 1.0, 10)
    post = stats.norm(x.sum() / 11, math.sqrt(1 / 11))
    row = {"site": "mu", "index": [], "mean": post.mean() + 0.3 * post.std(), "sd": post.std(),
           "mcse_mean": mcse_ref * post.std()}
    name = f"normal_mean_reference_{str(mcse_ref).replace('.', '_')}"
    zoo.register(name, normal_mean, {"x": x}, reference=StoredReference(lambda: {"scalars": [row]}, kind="test"),
                 overwrite=True)
    cmp = zoo.compare(name, backends=["svi"])
    scores = cmp.scalars.set_index("name").loc["mu"]
    assert abs(scores["z"] + 0.3) < 0.1  # svi sits on the exact posterior
    assert bool(cmp.table.set_index("backend").loc["svi", "correct"]) is passes
    assert math.isnan(scores["w1"]) and "stored test reference" in cmp.table["note"].iloc[0]


@pytest.mark.slow  # 4 x (500 + 500) NUTS draws
def test_nuts_is_correct_against_the_stored_reference():
    """A fast suite model: a hierarchical model with a deterministic site, against posteriordb's
    Stan reference (the whole suite runs in benchmarks/posteriordb_suite.py)."""
    cmp = zoo.compare("eight_schools_noncentered", backends=["nuts"], num_samples=500, num_warmup=500)
    row = cmp.table.set_index("backend").loc["nuts"]
    assert row["ess_bulk_min"] >= 400 and row["r_hat_max"] < 1.01 and row["divergences"] == 0
    assert bool(row["correct"]), cmp.scalars[["name", "z", "sd_ratio"]]


def test_noncentred_draws_come_back_as_the_model_s_own_sites():
    """`inference.reparam`: the sampler's problem has ``theta_decentered`` in place of
    ``theta``; its draws come back as theta = mu + tau * theta_decentered (numpy here), under the
    model's own site names, with ``lp`` left for the packaging to compute under the model as
    written."""
    problem = prepare(zoo.get_model("eight_schools_centered"), suite.eight_schools_centered.data())
    inner = reparam.noncentred(problem, ["theta"])
    assert list(inner.sites) == ["mu", "tau", "theta_decentered"] and "theta" in problem.sites
    rng = np.random.default_rng(0)
    draws = {"mu": rng.normal(size=(2, 3)), "tau": rng.gamma(2.0, size=(2, 3)),
             "theta_decentered": rng.normal(size=(2, 3, 8))}
    fit = Fit(posterior=draws, sample_stats={"lp": np.zeros((2, 3)), "diverging": np.zeros((2, 3), bool)},
              diagnostics={"chains": "2 chains"})
    out = reparam.restore(problem, inner, fit, ["theta"])
    assert list(out.posterior) == list(problem.sites) and set(out.sample_stats) == {"diverging"}
    np.testing.assert_allclose(out.posterior["theta"],
                               draws["mu"][..., None] + draws["tau"][..., None] * draws["theta_decentered"])
    assert "LocScaleReparam" in out.diagnostics["chains"]


@pytest.mark.slow  # 4 x (500 + 1500) NUTS draws, 20-60 s on the shared machine
def test_centred_eight_schools_runs_nuts_non_centred_and_is_correct():
    """The centred eight schools (a funnel: 13 divergences at target_accept 0.99 as written)
    under its default ``noncentered="theta"``: nuts samples Pyro's LocScaleReparam(centered=0)
    of theta, the draws come back as the model's own site ``theta`` (no ``theta_decentered``),
    and at the model's defaults (4 x (500 + 1500)) they match posteriordb's reference with no
    divergence."""
    cmp = zoo.compare("eight_schools_centered", backends=["nuts"])
    row = cmp.table.set_index("backend").loc["nuts"]
    posterior = cmp.results["nuts"].idata.posterior
    assert set(posterior.data_vars) == {"mu", "tau", "theta"} and posterior["theta"].shape[-1] == 8
    assert "LocScaleReparam" in row["note"] and row["divergences"] == 0 and row["r_hat_max"] < 1.01
    assert bool(row["correct"]), cmp.scalars[["name", "z", "sd_ratio"]]


@pytest.mark.parametrize("sites, words", [("nope", ["'nope'", "not a continuous latent site"]),
                                          ("tau", ["'tau'", "HalfCauchy", "loc and a scale"])])
def test_noncentered_refuses_a_site_it_cannot_decentre(sites, words):
    with pytest.raises(zoo.ZooError) as err:
        zoo.run("eight_schools_centered", "nuts", noncentered=sites, num_samples=10, num_warmup=10)
    assert all(w in str(err.value) for w in ["eight_schools_centered", *words]), err.value


def test_arma11_chains_start_where_the_error_recursion_is_stable():
    """Stan's rule (uniform(-2, 2) on the unconstrained scale) starts arma11's moving-average
    coefficient theta outside (-1, 1) in some chains (seed 0: two of four); there the error
    recursion grows like theta^200, the gradient is astronomical and nuts's step size
    collapses (1e-40: the chain never moves). The model's default init_radius 0.5 starts every
    chain inside."""
    problem = prepare(zoo.get_model("arma11"), suite.arma11.data())
    stan = [float(init_values(problem, s)["theta"]) for s in chain_seeds(0, 4)]
    assert any(abs(t) > 1 for t in stan)
    assert zoo.get_model("arma11").backends.options["nuts"]["init_radius"] == 0.5
    assert all(abs(float(init_values(problem, s, 0.5)["theta"])) < 0.5 for s in chain_seeds(0, 4))


@pytest.mark.slow  # 4 x (500 + 500) NUTS draws
def test_arma11_nuts_is_correct_from_its_default_starts():
    """At its defaults (4 x (500 + 500), init_radius 0.5) nuts matches posteriordb's reference."""
    cmp = zoo.compare("arma11", backends=["nuts"])
    row = cmp.table.set_index("backend").loc["nuts"]
    assert row["r_hat_max"] < 1.01 and row["divergences"] == 0
    assert bool(row["correct"]), cmp.scalars[["name", "z", "sd_ratio"]]


def test_a_benchmark_rerun_of_some_back_ends_keeps_the_others_rows():
    """``posteriordb_suite.py --update --backends nuts``: the new nuts row replaces the old one
    (and its left-out reason), the svi row of the earlier run stays, ``recommended`` is marked
    again over both (the faster correct one), and ``runs`` says which run made which rows."""

    def row(backend, seconds, correct, note=""):
        return {**dict.fromkeys(COLUMNS), "backend": backend, "seconds": seconds, "correct": correct, "note": note}

    old = {"name": "m", "command": "first", "date": "d0", "load": [1.0, 1.0], "not_run": "stale",
           "left_out": {"nuts": "too slow"},
           "rows": [row("svi", 30.0, True), row("nuts", None, None, "left out: too slow")]}
    new = {"name": "m", "load": [2.0, 2.0], "left_out": {}, "rows": [row("nuts", 10.0, True)]}
    out = merged(old, new, "second")
    by = {r["backend"]: r for r in out["rows"]}
    assert set(by) == {"svi", "nuts"} and by["nuts"]["seconds"] == 10.0 and by["svi"]["seconds"] == 30.0
    assert by["nuts"]["recommended"] and not by["svi"]["recommended"]
    assert out["left_out"] == {} and "not_run" not in out
    assert [r["backends"] for r in out["runs"]] == [["nuts", "svi"], ["nuts"]]
    assert [r["command"] for r in out["runs"]] == ["first", "second"]


@pytest.mark.parametrize("name", ["kidscore_interaction", "kilpisjarvi"])
def test_default_svi_is_correct_on_the_unstandardised_regressions(name):
    """Unstandardised covariates correlate the coefficients at -0.99 (kidscore_interaction)
    and -0.99999 (kilpisjarvi). From the best prior draw default svi ran to the 10000-step
    cap 1.65 and 2.05 posterior sds short of posteriordb's means; from the Laplace start,
    its steps whitened by the Laplace covariance, it converges and is correct."""
    cmp = zoo.compare(name, backends=["svi"])
    row = cmp.table.set_index("backend").loc["svi"]
    d = cmp.results["svi"].diagnostics
    assert d["start"] == "laplace" and d["converged"] is True, d.get("note")
    assert row["max_abs_z"] < 0.25 and bool(row["correct"]), cmp.scalars[["name", "z", "sd_ratio"]]

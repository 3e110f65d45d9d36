"""The command line round trip (run, compare, load) and bring-your-own-model."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import zoo
from zoo import registry
from zoo.cli import main
from zoo.core.spec import exact_from_scipy


def test_cli_list_in_a_subprocess():
    out = subprocess.run([sys.executable, "-m", "zoo", "list"], capture_output=True, text=True, check=True)
    for name in registry.SHIPPED:  # models other tests registered in this process are not the subprocess's
        assert name in out.stdout


def test_cli_run_writes_a_result_that_loads(tmp_path, capsys):
    assert main(["run", "poisson_gamma", "--backend", "nuts", "--num-samples", "40", "--num-warmup", "40",
                 "--num-chains", "2", "--seed", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    path = tmp_path / "poisson_gamma_nuts.nc"
    res = zoo.load(path)
    again = zoo.run("poisson_gamma", "nuts", seed=2, num_samples=40, num_warmup=40, num_chains=2)
    np.testing.assert_array_equal(res.draws("lam"), again.draws("lam"))
    assert res.model == "poisson_gamma" and res.backend == "nuts" and res.seed == 2
    assert res.diagnostics["divergences"] == again.diagnostics["divergences"]
    assert res.options["num_samples"] == 40
    assert "lam" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_cli_compare_writes_table_netcdf_and_plots(tmp_path):
    assert main(["compare", "beta_bernoulli", "--backends", "exact,svi,importance", "--num-steps", "200",
                 "--num-samples", "200", "--out", str(tmp_path), "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "table.csv")
    assert list(table["backend"]) == ["exact", "svi", "importance"]
    assert (tmp_path / "table.md").read_text().startswith("| backend")
    for f in ["exact.nc", "svi.nc", "importance.nc", "forest.png", "density.png", "scalars.csv"]:
        assert (tmp_path / f).stat().st_size > 0, f
    assert zoo.load(tmp_path / "svi.nc").backend == "svi"


def test_cli_bad_input_exits_2_with_message(capsys):
    assert main(["run", "beta_bernoul", "--backend", "exact"]) == 2
    assert "did you mean 'beta_bernoulli'" in capsys.readouterr().err
    assert main(["run", "beta_bernoulli", "--backend", "svi", "--guide", "nope"]) == 2
    assert main(["compare", "normal_gamma", "--hyper", "kappa0=-1"]) == 2
    assert "kappa0" in capsys.readouterr().err


def test_cli_reads_data_files(tmp_path):
    np.savez(tmp_path / "d.npz", y=np.array([1, 0, 1, 1, 0, 1]))
    assert main(["run", "beta_bernoulli", "--backend", "exact", "--data", str(tmp_path / "d.npz"),
                 "--hyper", "alpha=1", "--hyper", "beta=1", "--out", str(tmp_path)]) == 0
    res = zoo.load(tmp_path / "beta_bernoulli_exact.nc")
    # Beta(1 + 4, 1 + 2): mean 5/8
    assert abs(res.draws("p").mean() - 5 / 8) < 5 * stats.beta(5, 3).std() / np.sqrt(4000)


def test_load_missing_file(tmp_path):
    with pytest.raises(zoo.ZooError, match="no saved result"):
        zoo.load(tmp_path / "nothing.nc")


def eight_schools(J, sigma, y=None):
    """Eight schools, non-centred (Rubin 1981): a model written by a user in a test."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", J):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * eta, sigma), obs=y)


SCHOOLS = {"J": 8, "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0],
           "y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]}


def test_register_your_own_model_runs_under_every_generic_backend():
    spec = zoo.register("eight_schools_test", eight_schools, data=SCHOOLS, overwrite=True)
    assert spec.latent_sites == () and spec.observed_keys == ("y",)
    assert "eight_schools_test" in zoo.list_models()
    res = zoo.run("eight_schools_test", "nuts", num_samples=50, num_warmup=50, num_chains=2)
    assert set(res.idata.posterior.data_vars) == {"mu", "tau", "eta"}
    assert res.idata.posterior["eta"].shape == (2, 50, 8)
    assert res.idata.log_likelihood["y"].shape == (2, 50, 8)
    for backend, opts in [("svi", {"num_steps": 50}), ("importance", {"num_steps": 50, "num_particles": 500}),
                          ("hmc", {"num_samples": 20, "num_warmup": 20, "num_chains": 2})]:
        assert zoo.run("eight_schools_test", backend, **opts).idata.posterior["eta"].shape[-1] == 8
    with pytest.raises(zoo.ZooError, match="eight_schools_test.*exact.*no closed-form"):
        zoo.run("eight_schools_test", "exact")
    data, truth = zoo.simulate("eight_schools_test", seed=0)
    assert data["J"] == 8 and data["y"].shape == (8,) and set(truth) == {"mu", "tau", "eta"}
    with pytest.raises(zoo.ZooError, match="eight_schools_test.*y.*NaN"):
        zoo.run("eight_schools_test", "nuts", data={**SCHOOLS, "y": [np.nan] * 8})


def test_register_checks_support_of_observed_sites_it_traced():
    def coin(y=None):
        p = pyro.sample("p", dist.Beta(1.0, 1.0))
        with pyro.plate("n", 3 if y is None else len(y)):
            pyro.sample("y", dist.Bernoulli(p), obs=y)

    zoo.register("coin_test", coin, data={"y": [1.0, 0.0, 1.0]}, overwrite=True)
    for backend in ["nuts", "svi", "importance"]:
        with pytest.raises(zoo.ZooError, match=r"coin_test.*observed site 'y'.*2: 2\.0"):
            zoo.run("coin_test", backend, data={"y": [1.0, 0.0, 2.0]})


def test_register_with_exact_posterior_is_scored():
    def known_variance(x=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("n", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def exact(data, hyper):
        n, s = len(data["x"]), float(np.sum(data["x"]))
        return exact_from_scipy({"mu": stats.norm(s / (n + 1), 1 / np.sqrt(n + 1))})

    x = np.random.default_rng(0).normal(1.0, 1.0, 25)
    zoo.register("known_variance_test", known_variance, data={"x": x}, exact=exact, overwrite=True)
    cmp = zoo.compare("known_variance_test", backends=["exact", "svi"], num_samples=1000)
    table = cmp.table.set_index("backend")
    # 4000 independent draws: |z| has standard error 1/sqrt(4000) = 0.016
    assert table.loc["exact", "max_abs_z"] < 0.08
    assert table.loc["svi", "max_abs_z"] < 0.25 and cmp.results["svi"].diagnostics["converged"] is True


def test_register_rejects_bad_models():
    with pytest.raises(zoo.ZooError, match="built-in"):
        zoo.register("normal_gamma", eight_schools, data=SCHOOLS)
    with pytest.raises(zoo.ZooError, match="data key 'K' is not an argument"):
        zoo.register("bad_keys_test", eight_schools, data={**SCHOOLS, "K": 3})
    with pytest.raises(zoo.ZooError, match="already registered"):
        zoo.register("eight_schools_dup", eight_schools, data=SCHOOLS)
        zoo.register("eight_schools_dup", eight_schools, data=SCHOOLS)
    torch.manual_seed(0)


# Terminal output (issue 17 item 4)

def test_table_cells_show_integers_as_integers_and_no_nan():
    from zoo.cli import format_value
    assert [format_value(v) for v in (4000.0, 12, np.int64(3), 1.4396e7, 0.123456, np.nan, True, None)] == \
        ["4000", "12", "3", "14396000", "0.1235", "", "yes", ""]


def test_compare_prints_a_short_table_and_lists_what_did_not_run(capsys):
    assert main(["compare", "beta_bernoulli", "--backends", "exact,svi,enum", "--num-steps", "100",
                 "--num-samples", "100", "--no-progress"]) == 0
    out = capsys.readouterr().out
    table, _, below = out.partition("\n\n")
    assert max(map(len, table.splitlines())) <= 120
    assert "NaN" not in out and "nan" not in table
    assert "enum" not in table and "not run:" in below and "enum: not applicable" in below
    assert "  400  " in table  # draws: 4 chains x 100, an integer
    assert "more column" in table  # the rest is one flag away
    assert main(["compare", "beta_bernoulli", "--backends", "exact", "--num-samples", "100", "--wide",
                 "--no-progress"]) == 0
    assert "ess_per_second" in capsys.readouterr().out


def test_no_progress_bars_when_stderr_is_not_a_terminal():
    out = subprocess.run([sys.executable, "-m", "zoo", "run", "beta_bernoulli", "--backend", "svi",
                          "--num-steps", "50", "--num-samples", "50"], capture_output=True, text=True, check=True)
    assert "\x1b[" not in out.stderr and "\r" not in out.stderr and "it/s" not in out.stderr


def test_run_prints_diagnostics_and_the_closed_form_parameters(capsys):
    assert main(["run", "normal_gamma", "--backend", "exact", "--num-samples", "100"]) == 0
    out = capsys.readouterr().out
    assert "diagnostics:" in out and "log_evidence" in out
    spec = zoo.get_model("normal_gamma")
    data, _ = zoo.simulate("normal_gamma", seed=0)
    extra = spec.reference.exact(data, {k: h.default for k, h in spec.hyper.items()}).extra
    assert "closed-form posterior:" in out
    for key, value in extra.items():
        assert f"{key}: {float(value):.4g}" in out


def test_list_shows_only_backends_that_apply_in_lines_that_fit():
    from zoo.cli import display_width, list_lines
    lines = list_lines()
    assert max(map(display_width, lines)) <= 100
    by_model = {line.split()[0]: line for line in lines if line and not line[0].isspace()}
    assert set(by_model) == set(zoo.list_models())
    assert by_model["realnvp_flow"].split()[1:] == ["mle*"]  # the generic back-ends do not apply
    assert "svi" not in by_model["uniform_pareto"].split()  # support depends on the data
    assert "enum" not in by_model["normal_gamma"].split()


def test_every_flag_of_every_subcommand_has_help():
    import argparse

    from zoo.cli import _parser
    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings or action.dest}: no help text"

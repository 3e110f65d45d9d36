"""Simulation-based calibration: the chi-square test against scipy and a numpy re-implementation,
ranks against the exact posterior CDF, a passing and a deliberately failing back-end, files
that resume, and the command line."""
from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import zoo
from zoo import registry
from zoo import tasks as task_module
from zoo.calibration import SBCResult, rank_bins, sbc, uniformity_tests
from zoo.cli import main
from zoo.models import normal_known_variance as nkv


def _numpy_chi2(ranks: np.ndarray, L: int, n_bins: int) -> tuple[float, float]:
    """Reference: ranks 0..L cut into n_bins blocks of consecutive values, Pearson's statistic."""
    edges = [round(b * (L + 1) / n_bins) for b in range(n_bins + 1)]
    obs = np.array([np.sum((ranks >= lo) & (ranks < hi)) for lo, hi in itertools.pairwise(edges)])
    exp = len(ranks) * np.diff(edges) / (L + 1)
    chi2 = float(np.sum((obs - exp) ** 2 / exp))
    return chi2, float(stats.chi2.sf(chi2, n_bins - 1))


@pytest.mark.parametrize("L,n", [(99, 100), (19, 200), (49, 37), (9, 1000), (6, 12), (9, 10)])
def test_bins_expect_at_least_five(L, n):
    of_rank = rank_bins(L, n)
    width = np.bincount(of_rank)
    assert len(of_rank) == L + 1 and np.all(np.diff(of_rank) >= 0)  # blocks of consecutive ranks
    assert 2 <= len(width) <= min(L + 1, n // 5)
    assert n * width.min() / (L + 1) >= 5
    assert width.max() - width.min() <= 1


def test_too_few_simulations_for_two_bins_raise():
    with pytest.raises(zoo.ZooError, match="too few"):
        rank_bins(6, 10)  # 7 rank values in 2 bins: the smaller one expects 10 * 3/7 < 5


def test_chi_square_matches_numpy_reference():
    rng = np.random.default_rng(1)
    ranks = pd.DataFrame({"scalar": "a", "rank": rng.integers(0, 100, size=100)})
    row = uniformity_tests(ranks, 99).iloc[0]
    assert row["bins"] == 20
    chi2, p = _numpy_chi2(ranks["rank"].to_numpy(), 99, 20)
    assert row["chi2"] == pytest.approx(chi2) and row["p_value"] == pytest.approx(p)


def test_chi_square_rejects_a_u_shape_and_accepts_uniform_ranks():
    rng = np.random.default_rng(2)
    u = rng.beta(0.5, 0.5, size=200)  # ranks of an over-confident posterior pile at both ends
    ranks = pd.DataFrame({"scalar": ["u"] * 200 + ["flat"] * 200,
                          "rank": np.r_[np.floor(u * 50), rng.integers(0, 50, 200)].astype(int)})
    tests = uniformity_tests(ranks, 49).set_index("scalar")
    assert tests.loc["u", "p_value"] < 1e-6
    assert tests.loc["flat", "p_value"] > 0.01


def test_the_reading_names_the_shape_of_the_ranks():
    """Ranks from Beta(a, b) shapes: a U (too narrow), a hump (too wide), a tilt (shifted)."""
    rng = np.random.default_rng(4)
    shapes = {"u": (0.5, 0.5), "hump": (3, 3), "tilt_up": (2, 1), "tilt_down": (1, 2)}
    scalars = [k for k in shapes for _ in range(300)] + ["flat"] * 300
    values = np.r_[np.concatenate([rng.beta(a, b, 300) for a, b in shapes.values()]), rng.random(300)]
    tests = uniformity_tests(pd.DataFrame({"scalar": scalars, "rank": np.floor(values * 50).astype(int)}), 49)
    reading = dict(zip(tests["scalar"], tests["reading"]))
    assert reading == {"u": "posterior too narrow (U-shaped ranks)",
                       "hump": "posterior too wide (ranks bunched in the middle)",
                       "tilt_up": "posterior shifted low (truth above the draws)",
                       "tilt_down": "posterior shifted high (truth below the draws)", "flat": ""}
    flat = tests.set_index("scalar").loc["flat"]
    # uniform ranks on 0..49 (scipy's randint): mean rank / L = 0.5 and the sd ratio 1, each
    # within 3 standard errors (an sd's relative se is sqrt(kurtosis - 1) / 2 / sqrt(n))
    uniform = stats.randint(0, 50)
    assert abs(flat["mean_rank"] - 0.5) < 3 * uniform.std() / np.sqrt(300) / 49
    assert abs(flat["rank_sd_ratio"] - 1) < 3 * np.sqrt(uniform.stats(moments="k") + 2) / 2 / np.sqrt(300)


def test_exact_ranks_follow_the_posterior_cdf_and_pass():
    """Given the truth, rank ~ Binomial(L, F(truth)) with F the Beta posterior CDF (scipy)."""
    L, n = 39, 40
    res = sbc("beta_bernoulli", "exact", num_simulations=n, num_draws=L, seed=3, progress=False)
    assert res.passed and res.tests["p_value"].min() > res.threshold
    assert list(res.ranks.columns) == ["simulation", "seed", "scalar", "rank"] and len(res.ranks) == n
    h = {k: v.default for k, v in zoo.get_model("beta_bernoulli").hyper.items()}
    for s in range(n):
        data, truth = zoo.simulate("beta_bernoulli", seed=3 + s)
        y = data["y"]
        F = stats.beta(h["alpha"] + y.sum(), h["beta"] + len(y) - y.sum()).cdf(truth["p"])
        rank = res.ranks.loc[res.ranks["simulation"] == s, "rank"].item()
        assert abs(rank - L * F) <= 4 * np.sqrt(L * F * (1 - F)) + 1, (s, rank, L * F)


@pytest.fixture
def overconfident(monkeypatch):
    """normal_known_variance with an exact posterior half as wide as the true one."""

    def exact(data, hyper):
        right = nkv.exact(data, hyper)
        mean, sd = right.mean["mu"], right.sd["mu"]
        return zoo.core.spec.exact_from_scipy({"mu": stats.norm(mean, sd / 2)})

    spec = dataclasses.replace(nkv.SPEC, name="overconfident_normal",
                               reference=dataclasses.replace(nkv.SPEC.reference, exact=exact))
    monkeypatch.setitem(registry.MODELS, spec.name, spec)
    return spec.name


def test_sbc_fails_for_a_deliberately_overconfident_posterior(overconfident):
    res = sbc(overconfident, "exact", num_simulations=60, num_draws=59, seed=0, progress=False)
    assert not res.passed
    assert res.tests["p_value"].iloc[0] < 1e-4
    # the failure is the U shape: far more ranks in the outer tenths than the 20% expected
    r = res.ranks["rank"].to_numpy()
    assert np.mean((r < 6) | (r > 53)) > 0.4
    assert res.tests["reading"].iloc[0] == "posterior too narrow (U-shaped ranks)"
    same = sbc("normal_known_variance", "exact", num_simulations=60, num_draws=59, seed=0, progress=False)
    assert same.passed


def test_save_load_and_resume(tmp_path, monkeypatch):
    tasks = tmp_path / "tasks"
    res = sbc("poisson_gamma", "exact", num_simulations=12, num_draws=11, out=tasks, progress=False)
    files = sorted((tasks / "poisson_gamma" / "exact").glob("*.json"))
    assert [f.name for f in files] == [f"{s}.json" for s in sorted(range(12), key=str)]
    assert json.loads(files[0].read_text())["task"]["kind"] == "sbc"
    written = res.save(tmp_path / "report")
    assert {p.name for p in written} >= {"ranks.csv", "tests.csv", "runs.csv", "sbc.json", "ranks.png", "ecdf.png"}
    back = SBCResult.load(tmp_path / "report")
    pd.testing.assert_frame_equal(back.ranks, res.ranks)
    pd.testing.assert_frame_equal(back.tests, res.tests)
    assert back.passed == res.passed and back.threshold == res.threshold
    # a re-run reads every finished task instead of running it; a lost file is run again
    files[3].unlink()
    calls = []
    real = task_module.run_task
    monkeypatch.setattr(task_module, "run_task", lambda task, work: calls.append(task.seed) or real(task, work))
    again = sbc("poisson_gamma", "exact", num_simulations=12, num_draws=11, out=tasks, progress=False)
    assert calls == [int(files[3].stem)]
    pd.testing.assert_frame_equal(again.ranks, res.ranks)
    with pytest.raises(zoo.ZooError, match="another task"):  # other options, same folder
        sbc("poisson_gamma", "exact", num_simulations=12, num_draws=11, out=tasks, num_samples=500)


@pytest.mark.parametrize("kwargs,match", [
    ({"num_simulations": 5}, "num_simulations"),
    ({"num_draws": 0}, "num_draws"),
    ({"num_draws": 5000}, "fewer than num_draws"),
    ({"alpha": 2.0}, "alpha"),
    ({"executor": "dask"}, "executor"),
    ({"num_steps": 10}, "num_steps"),
])
def test_bad_inputs_raise(kwargs, match):
    with pytest.raises(zoo.ZooError, match=match):
        sbc("normal_gamma", "exact", **{"num_simulations": 10, **kwargs})


def test_sbc_is_reachable_from_the_package_and_the_command_line(tmp_path, capsys):
    assert callable(zoo.sbc) and callable(zoo.grid)
    code = main(["sbc", "normal_known_mean", "--backend", "exact", "--simulations", "10", "--draws", "9",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0, capsys.readouterr()
    assert "passed" in capsys.readouterr().out
    assert (tmp_path / "ranks.csv").exists() and (tmp_path / "tasks" / "normal_known_mean" / "exact").is_dir()
    assert main(["sbc", "normal_known_mean", "--data", "x.npz"]) == 2


# catalogue section A (CONCEPTS.md): closed-form posteriors, cheap enough for 50 simulations
CONJUGATE = ["beta_bernoulli", "normal_known_variance", "normal_known_mean", "normal_gamma", "mvn_wishart",
             "dirichlet_categorical", "poisson_gamma", "uniform_pareto", "bayesian_linear_regression"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CONJUGATE)
def test_exact_is_calibrated_on_every_conjugate_model(name):
    res = sbc(name, "exact", num_simulations=50, num_draws=49, seed=10, progress=False)
    assert res.passed, res.tests


@pytest.mark.slow
def test_nuts_is_calibrated_on_normal_known_variance():
    """Small NUTS runs (1 chain, 100 + 100) thinned to L = 19: ESS >= 19 in (almost) every run."""
    res = sbc("normal_known_variance", "nuts", num_simulations=20, num_draws=19, seed=0, progress=False,
              num_samples=100, num_warmup=100, num_chains=1)
    assert (res.runs["ess_bulk_min"] < 19).sum() <= 2
    assert res.passed, res.tests

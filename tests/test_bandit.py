"""Bandits (Thompson sampling, UCB1, epsilon-greedy) and sequential Bayesian updating (issue 5)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import zoo
from zoo import registry
from zoo.bandit import COLUMNS, final_regret, plot_regret, regret_curves, thompson_draws
from zoo.cli import main

PROBS = (0.1, 0.2, 0.3)


@pytest.fixture(scope="module")
def curves():
    return regret_curves(PROBS, 2000, ["thompson", "ucb1"], seeds=10)


def test_thompson_beats_ucb1_and_both_are_sublinear(curves):
    """Chapelle & Li (2011): Thompson sampling's regret is below UCB1's on Bernoulli arms."""
    final = final_regret(curves)["mean"]
    assert final["thompson"] < final["ucb1"], final
    for policy, group in curves.groupby("policy"):
        per_round = group.groupby("round")["regret"].mean()
        first, second = per_round.iloc[:1000].mean(), per_round.iloc[1000:].mean()
        assert second < first, f"{policy}: regret per round did not fall ({first:.4f} -> {second:.4f})"


def test_frame_columns_and_regret():
    frame = zoo.simulate_bandit(PROBS, 300, "epsilon_greedy", seed=2, epsilon=0.2)
    assert list(frame.columns) == COLUMNS
    assert frame["round"].tolist() == list(range(1, 301))
    assert set(frame["arm"]) <= {0, 1, 2} and set(frame["reward"]) <= {0, 1}
    np.testing.assert_allclose(frame["regret"], 0.3 - np.asarray(PROBS)[frame["arm"]])
    np.testing.assert_allclose(frame["cumulative_regret"], np.cumsum(frame["regret"]))
    ucb = zoo.simulate_bandit(PROBS, 10, "ucb1")
    assert ucb["arm"].tolist()[:3] == [0, 1, 2], "UCB1 plays every arm once first"


@pytest.mark.parametrize("policy", ["thompson", "ucb1", "epsilon_greedy"])
def test_same_seed_same_frame(policy):
    a = zoo.simulate_bandit(PROBS, 200, policy, seed=7)
    b = zoo.simulate_bandit(PROBS, 200, policy, seed=7)
    c = zoo.simulate_bandit(PROBS, 200, policy, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_exact_thompson_draws_are_the_beta_posterior():
    arm = np.array([0, 0, 1, 1, 1, 2, 0, 1, 2, 2, 2, 2])
    y = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0, 0])
    draws = thompson_draws(arm, y, 3, num=4000, seed=0, hyper={"alpha": 2.0, "beta": 3.0})
    assert draws.shape == (4000, 3)
    for k in range(3):
        wins, pulls = y[arm == k].sum(), (arm == k).sum()
        res = stats.kstest(draws[:, k], stats.beta(2.0 + wins, 3.0 + pulls - wins).cdf)
        assert res.pvalue > 1e-3, (k, res)
    prior = thompson_draws([], [], 3, num=4000, seed=1)
    assert stats.kstest(prior.ravel(), "uniform").pvalue > 1e-3


def test_thompson_on_importance_backend():
    frame = zoo.simulate_bandit(PROBS, 100, backend="importance", refit=50, seed=0,
                                proposal="prior", num_particles=500, num_samples=50)
    assert list(frame.columns) == COLUMNS and len(frame) == 100
    assert frame.attrs["backend"] == "importance" and frame.attrs["inference_seconds"] > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"probs": [0.1, 1.2]}, "in \\[0, 1\\]"),
    ({"probs": [-0.1, 0.5]}, "in \\[0, 1\\]"),
    ({"probs": [0.5]}, "at least 2 arms"),
    ({"probs": [[0.1, 0.2]]}, "at least 2 arms"),
    ({"probs": [0.1, float("nan")]}, "in \\[0, 1\\]"),
    ({"horizon": 0}, "horizon"),
    ({"horizon": 2.5}, "horizon"),
    ({"policy": "thomson"}, "did you mean 'thompson'"),
    ({"backend": "nutz"}, "did you mean 'nuts'"),
    ({"policy": "ucb1", "backend": "nuts"}, "'thompson' only"),
    ({"refit": 0}, "refit"),
    ({"epsilon": 1.5}, "epsilon"),
    ({"backend": "svi", "num_stepz": 3}, "did you mean 'num_steps'"),
    ({"hyper": {"alpha": -1.0}}, "alpha"),
])
def test_invalid_input(kwargs, match):
    args = {"probs": PROBS, "horizon": 10, **kwargs}
    with pytest.raises(zoo.ZooError, match=match):
        zoo.simulate_bandit(args.pop("probs"), args.pop("horizon"), **args)


def test_bandit_model_validates_arms():
    with pytest.raises(zoo.ZooError, match="bernoulli_bandit.*arm.*K=3.*5: 3"):
        zoo.run("bernoulli_bandit", "exact", data={"arm": [0, 1, 2, 0, 1, 3], "y": [0, 1, 1, 0, 0, 1]})
    res = zoo.run("bernoulli_bandit", "exact", data={"arm": [0, 0, 3], "y": [1, 0, 1]}, hyper={"K": 5})
    assert res.draws("p").shape[1] == 5


def test_apples_batch_by_batch():
    """003 七: Beta(50, 50) -> 8 good, 2 bad -> Beta(58, 52) -> 9 good, 1 bad -> Beta(67, 53)."""
    batches = [{"y": [1] * 8 + [0] * 2}, {"y": [1] * 9 + [0] * 1}]
    steps = zoo.sequential_update("beta_bernoulli", batches, hyper={"alpha": 50, "beta": 50})
    assert steps == [{"alpha": 58.0, "beta": 52.0}, {"alpha": 67.0, "beta": 53.0}]
    one_shot = zoo.sequential_update("beta_bernoulli", [{"y": batches[0]["y"] + batches[1]["y"]}],
                                     hyper={"alpha": 50, "beta": 50})
    assert one_shot == steps[-1:]
    first = zoo.run("beta_bernoulli", "exact", data=batches[0], hyper={"alpha": 50, "beta": 50},
                    num_samples=20000, num_chains=1)
    assert first.draws("p").mean() == pytest.approx(58 / 110, abs=0.003)  # 003 七: E[p] = 58/110


SEQUENTIAL = [name for name, spec in registry.MODELS.items() if spec.reference.posterior_hyper is not None]


def test_sequential_models():
    assert {"beta_bernoulli", "poisson_gamma", "normal_known_mean", "normal_known_variance",
            "dirichlet_categorical"} <= set(SEQUENTIAL)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_batch_by_batch_equals_one_shot(name):
    """004 eq 2.5: the posterior of one batch is the prior of the next; the last posterior
    equals the one-shot posterior on all the data, and so does its evidence chain."""
    spec = zoo.get_model(name)
    data, _ = zoo.simulate(name, seed=0, N=30)
    key = spec.observed_keys[0]
    cuts = [0, 7, 8, 19, 30]
    batches = [{key: data[key][a:b]} for a, b in zip(cuts, cuts[1:])]
    steps = zoo.sequential_update(name, batches)
    assert len(steps) == len(batches)
    defaults = {k: h.default for k, h in spec.hyper.items()}
    one_shot = spec.reference.posterior_hyper(spec.reference.exact(data, defaults))
    for k, v in one_shot.items():
        np.testing.assert_allclose(steps[-1][k], v, rtol=1e-12)
    # the evidence factorises: log p(all) = sum of each batch's evidence under the running prior
    hyper, total = defaults, 0.0
    for batch, step in zip(batches, steps):
        total += spec.reference.exact(batch, {k: np.asarray(v) if isinstance(v, list) else v
                                    for k, v in hyper.items()}).log_evidence
        hyper = step
    assert total == pytest.approx(spec.reference.exact(data, defaults).log_evidence, rel=1e-10)


def test_sequential_update_rejects_non_conjugate_and_bad_batches():
    with pytest.raises(zoo.ZooError, match="not in the prior's family.*beta_bernoulli"):
        zoo.sequential_update("normal_gamma", [{"x": [1.0, 2.0]}])
    with pytest.raises(zoo.ZooError, match="batch 1: .*y.*outside the support"):
        zoo.sequential_update("beta_bernoulli", [{"y": [1, 0]}, {"y": [1, 2]}])
    with pytest.raises(zoo.ZooError, match="non-empty list"):
        zoo.sequential_update("beta_bernoulli", {"y": [1, 0]})


def test_cli_and_plot(tmp_path, capsys):
    assert main(["bandit", "--probs", "0.2,0.4", "--horizon", "200", "--policy", "thompson,ucb1",
                 "--seeds", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "thompson" in out and "ucb1" in out
    frame = pd.read_csv(tmp_path / "bandit.csv")
    assert list(frame.columns) == ["policy", "seed"] + COLUMNS and len(frame) == 2 * 3 * 200
    assert (tmp_path / "regret.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["bandit", "--probs", "0.2,x", "--horizon", "10"]) == 2
    single = zoo.simulate_bandit((0.2, 0.4), 50)
    assert plot_regret(single, tmp_path / "one.png").exists()

"""Bernoulli bandits played by Thompson sampling, UCB1 and epsilon-greedy (seed 000).

Thompson sampling draws one success probability per arm from the posterior of the
``bernoulli_bandit`` model and plays the largest draw; its posterior comes from any back-end
(``exact``: the conjugate Beta posterior, updated every round at no cost), so the cost of an
approximate posterior shows as regret. UCB1 plays the arm with the largest upper confidence
bound that Hoeffding's inequality gives (000 式5-4, 5-5). Regret is the expected regret
max(probs) - probs[arm], so it does not depend on the luck of the rewards.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoo import registry
from zoo.api import run_draws
from zoo.core.errors import ZooError, unknown_name
from zoo.core.files import atomic_write
from zoo.core.problem import check_hyper, check_int, check_options, prepare
from zoo.models import bernoulli_bandit

POLICIES = ("thompson", "ucb1", "epsilon_greedy")
COLUMNS = ["round", "arm", "reward", "regret", "cumulative_regret"]
MODEL = "bernoulli_bandit"
# Small settings for the posterior refits of Thompson sampling on an approximate back-end
# (each refit is `zoo.run`'s fit, through `zoo.api.run_draws`); override them with keywords.
REFIT_OPTIONS: dict[str, dict[str, Any]] = {
    "nuts": {"num_samples": 200, "num_warmup": 200, "num_chains": 1},
    "hmc": {"num_samples": 200, "num_warmup": 200, "num_chains": 1},
    "svi": {"num_steps": 300, "num_samples": 200, "num_chains": 1, "num_elbo_particles": 10},
    "importance": {"num_steps": 200, "num_particles": 2000, "num_samples": 200, "num_chains": 1},
}


def _check_probs(probs: Any) -> np.ndarray:
    try:
        arr = np.asarray(probs, dtype=float)
    except (TypeError, ValueError):
        raise ZooError(f"bandit: probs must be a list of success probabilities, got {probs!r:.80}") from None
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ZooError(f"bandit: probs must list at least 2 arms' success probabilities, got {probs!r:.80}")
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > 1)
    if bad.any():
        shown = ", ".join(f"{i}: {float(arr[i])!r}" for i in np.flatnonzero(bad)[:5])
        raise ZooError(f"bandit: probs must lie in [0, 1], got {{{shown}}}")
    return arr


def simulate_bandit(probs: Sequence[float], horizon: int, policy: str = "thompson",
                    backend: str = "exact", seed: int = 0, refit: int = 1, epsilon: float = 0.1,
                    hyper: Mapping[str, Any] | None = None, **options: Any) -> pd.DataFrame:
    """Play a Bernoulli bandit for ``horizon`` rounds.

    Parameters
    ----------
    probs : the arms' success probabilities (at least 2, each in [0, 1]).
    horizon : number of rounds.
    policy : ``"thompson"`` (play the largest of one posterior draw per arm), ``"ucb1"``
        (play each arm once, then the largest mean_k + sqrt(2 ln t / n_k), t rounds played and
        n_k plays of arm k: Hoeffding's inequality P(|mean - E| >= eps) <= exp(-2 n eps^2)
        (000 式5-4) with eps = sqrt(2 ln t / n) puts the true mean above the bound with
        probability at most t^-4 (式5-5)), or ``"epsilon_greedy"`` (each arm once, then a random
        arm with probability ``epsilon``, else the best empirical mean; ties broken at random).
    backend : where Thompson sampling's posterior comes from: ``"exact"`` (the conjugate Beta
        posterior) or any back-end of ``bernoulli_bandit`` (``nuts``, ``svi``, ``importance``,
        ``hmc``), fitted as `zoo.run` fits it (`zoo.api.run_draws`) on the history so far every
        ``refit`` rounds; its draws are used one per round, in random order, until the next
        refit (cycling if there are fewer draws than rounds). Before the first refit the draws
        come from the prior.
    seed : the same seed gives the same rounds. Rewards come from their own stream, so every
        policy meets the same reward sequence for each arm at a given seed.
    refit : update the posterior every ``refit`` rounds (the exact posterior too, so that
        ``exact`` with the same ``refit`` is the yardstick for an approximate back-end).
    epsilon : exploration rate of ``epsilon_greedy``.
    hyper : the Beta prior of Thompson sampling, ``{"alpha": 1.0, "beta": 1.0}`` by default.
    **options : back-end options for the refits (defaults `REFIT_OPTIONS`).

    Returns
    -------
    pandas.DataFrame
        one row per round: ``round`` (1-based), ``arm``, ``reward`` (0/1), ``regret``
        (max(probs) - probs[arm]) and ``cumulative_regret``; ``frame.attrs`` records the
        settings and ``inference_seconds`` (time spent in back-end refits).

    Raises
    ------
    ZooError
        for probabilities outside [0, 1], fewer than 2 arms, a horizon that is not a positive
        integer, an unknown policy or back-end, or bad options.
    """
    probs = _check_probs(probs)
    horizon = check_int(horizon, "horizon", 1, "bandit: ")
    refit = check_int(refit, "refit", 1, "bandit: ")
    seed = check_int(seed, "seed", 0, "bandit: ")
    if not isinstance(policy, str) or policy not in POLICIES:
        raise unknown_name("policy", policy, POLICIES, "bandit: ")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon <= 1:
        raise ZooError(f"bandit: epsilon must be a number in [0, 1], got {epsilon!r}")
    K = len(probs)
    spec = registry.get_model(MODEL)
    prior = _prior(hyper or {}, K)
    if policy != "thompson" and (backend != "exact" or options):
        raise ZooError(f"bandit: policy {policy!r} uses no posterior; back-end {backend!r} and "
                       f"back-end options apply to policy 'thompson' only")
    if backend == "exact":
        if options:
            raise ZooError(f"bandit: back-end 'exact' draws from the Beta posterior directly and "
                           f"takes no options, got {sorted(options)}")
    else:
        b = registry.get_backend(spec, backend)
        options = {**REFIT_OPTIONS.get(backend, {}), "progress": False, **options}
        check_options(prepare(spec, {"arm": [0], "y": [0]}, prior), b, options)

    env_seq, policy_seq = np.random.SeedSequence(seed).spawn(2)
    uniforms = np.random.default_rng(env_seq).random((horizon, K))
    rng = np.random.default_rng(policy_seq)
    arms = np.zeros(horizon, dtype=np.int64)
    rewards = np.zeros(horizon, dtype=np.int64)
    pulls, wins = np.zeros(K), np.zeros(K)
    inference_seconds = 0.0
    for t in range(horizon):
        if policy == "thompson":
            if t % refit == 0:
                exact = bernoulli_bandit.count_params(pulls, wins, prior["alpha"], prior["beta"])
                draws, seconds = _thompson_draws(arms[:t], rewards[:t], exact, backend, rng, prior,
                                                 min(refit, horizon - t), options)
                inference_seconds += seconds
                used = 0
            arm = int(np.argmax(draws[used % len(draws)]))
            used += 1
        elif t < K:
            arm = t
        elif policy == "ucb1":
            arm = int(np.argmax(wins / pulls + np.sqrt(2 * math.log(t) / pulls)))
        elif rng.random() < epsilon:
            arm = int(rng.integers(K))
        else:
            means = wins / pulls
            arm = int(rng.choice(np.flatnonzero(means == means.max())))
        reward = int(uniforms[t, arm] < probs[arm])
        arms[t], rewards[t] = arm, reward
        pulls[arm] += 1
        wins[arm] += reward
    regret = probs.max() - probs[arms]
    frame = pd.DataFrame({"round": np.arange(1, horizon + 1), "arm": arms, "reward": rewards,
                          "regret": regret, "cumulative_regret": np.cumsum(regret)})
    frame.attrs.update(policy=policy, backend=backend if policy == "thompson" else None,
                       probs=probs.tolist(), seed=seed, refit=refit, inference_seconds=inference_seconds)
    return frame


def thompson_draws(arm: Any, y: Any, K: int, num: int = 1000, backend: str = "exact",
                   seed: int | np.random.Generator = 0, hyper: Mapping[str, Any] | None = None,
                   **options: Any) -> np.ndarray:
    """Posterior draws of the arms' success probabilities given a bandit history.

    Parameters
    ----------
    arm, y : the arms played and their 0/1 rewards, shape (N,) each (N may be 0: the prior).
    K : number of arms.
    num : number of draws (``exact`` and the prior; an approximate back-end returns the
        ``num_samples x num_chains`` draws of its run, in random order).
    backend : ``"exact"`` (independent Beta(alpha + successes, beta + failures) per arm) or a
        back-end of ``bernoulli_bandit``, fitted as `zoo.run` fits it (`zoo.api.run_draws`).
    seed : an integer or a numpy Generator.
    hyper : ``{"alpha": ..., "beta": ...}`` of the Beta prior.

    Returns
    -------
    numpy.ndarray of shape (draws, K).
    """
    prior = _prior(hyper or {}, K)
    if len(arm):
        prepare(registry.get_model(MODEL), {"arm": arm, "y": y}, prior)  # ZooError on bad history
    if backend != "exact":
        options = {**REFIT_OPTIONS.get(backend, {}), "progress": False, **options}
    arm, y = np.asarray(arm), np.asarray(y)
    exact = bernoulli_bandit.posterior_params(arm, y, K, prior["alpha"], prior["beta"])
    return _thompson_draws(arm, y, exact, backend, np.random.default_rng(seed), prior, num, options)[0]


def _prior(hyper: Mapping[str, Any], K: int) -> dict[str, Any]:
    """The validated hyperparameters of ``bernoulli_bandit`` for K arms."""
    if "K" in hyper and hyper["K"] != K:
        raise ZooError(f"bandit: hyper K={hyper['K']!r} but there are {K} arms")
    _, np_h, _ = check_hyper(registry.get_model(MODEL), {**hyper, "K": K})
    return {"K": K, "alpha": float(np_h["alpha"]), "beta": float(np_h["beta"])}


def _thompson_draws(arm: np.ndarray, y: np.ndarray, exact: tuple[np.ndarray, np.ndarray], backend: str,
                    rng: np.random.Generator, prior: dict[str, Any], num: int,
                    options: dict) -> tuple[np.ndarray, float]:
    """Draws of p, shape (draws, K), and the seconds the back-end spent; ``exact`` is the
    history's Beta posterior ``(alpha_n, beta_n)``, drawn from on ``exact`` and before any play
    (the player keeps it as running counts: recounting the history each round made a 5000-round
    game quadratic)."""
    if backend == "exact" or len(arm) == 0:
        return rng.beta(*exact, size=(num, prior["K"])), 0.0
    res = run_draws(MODEL, backend, data={"arm": arm, "y": y}, seed=int(rng.integers(2**31)), hyper=prior, **options)
    return rng.permutation(res.draws("p")), res.seconds


def _parse_policy(label: str, backend: str) -> tuple[str, str]:
    """``"thompson:nuts"`` is Thompson sampling on back-end nuts."""
    if isinstance(label, str) and ":" in label:
        policy, backend = label.split(":", 1)
        return policy, backend
    return label, backend if label == "thompson" else "exact"


def regret_curves(probs: Sequence[float], horizon: int,
                  policies: Sequence[str] = POLICIES, seeds: int | Sequence[int] = 5,
                  backend: str = "exact", refit: int = 1, epsilon: float = 0.1,
                  **options: Any) -> pd.DataFrame:
    """Play every policy at every seed; one long frame for `plot_regret` and `final_regret`.

    Parameters
    ----------
    policies : policy names; a label ``"thompson:svi"`` runs Thompson sampling on that back-end
        (plain ``"thompson"`` uses ``backend``).
    seeds : how many seeds (0, 1, ...) or the seeds themselves.
    refit, epsilon, **options : as in `simulate_bandit` (options go to the Thompson runs on
        approximate back-ends only).

    Returns
    -------
    pandas.DataFrame
        `simulate_bandit`'s columns plus ``policy`` (the label) and ``seed``.
    """
    seeds = list(range(check_int(seeds, "seeds", 1, "bandit: "))) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if isinstance(policies, str):
        policies = [policies]
    if not seeds or not policies:
        raise ZooError("bandit: regret_curves needs at least one policy and one seed")
    parsed = [_parse_policy(label, backend) for label in policies]
    if options and all(b == "exact" for _, b in parsed):
        raise ZooError(f"bandit: back-end options {sorted(options)} apply to Thompson sampling on an "
                       f"approximate back-end, and none of the policies {list(policies)} uses one")
    frames = []
    for label, (policy, b) in zip(policies, parsed):
        opts = options if b != "exact" else {}
        for s in seeds:
            frame = simulate_bandit(probs, horizon, policy, backend=b, seed=s, refit=refit,
                                    epsilon=epsilon, **opts)
            frames.append(frame.assign(policy=label, seed=s))
    return pd.concat(frames, ignore_index=True)[["policy", "seed"] + COLUMNS]


def final_regret(frame: pd.DataFrame) -> pd.DataFrame:
    """Final cumulative regret per policy over seeds: mean, sd, min, max and seed count."""
    last = frame[frame["round"] == frame["round"].max()]
    out = last.groupby("policy", sort=False)["cumulative_regret"].agg(["mean", "std", "min", "max", "count"])
    return out.rename(columns={"std": "sd", "count": "seeds"})


def plot_regret(frame: pd.DataFrame, path: str | Path, band: tuple[float, float] = (0.1, 0.9),
                title: str | None = None) -> Path:
    """Mean cumulative regret per policy over rounds, with a band of quantiles over seeds, as PNG.

    Parameters
    ----------
    frame : a `regret_curves` frame (a single `simulate_bandit` frame is one curve).
    band : lower and upper quantiles over seeds of the shaded band (10% to 90% by default).
    """
    import matplotlib.pyplot as plt

    if "policy" not in frame:
        frame = frame.assign(policy=frame.attrs.get("policy", "policy"), seed=frame.attrs.get("seed", 0))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, group in frame.groupby("policy", sort=False):
        curve = group.groupby("round")["cumulative_regret"]
        mean, lo, hi = curve.mean(), curve.quantile(band[0]), curve.quantile(band[1])
        (line,) = ax.plot(mean.index, mean.values, label=f"{label} ({group['seed'].nunique()} seeds)")
        ax.fill_between(mean.index, lo.values, hi.values, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative regret")
    ax.set_title(title or f"Bernoulli bandit: mean cumulative regret, band {band[0]:.0%}-{band[1]:.0%} over seeds")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)

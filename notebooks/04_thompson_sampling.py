# ---
# jupyter:
#   execution:
#     timeout: 180
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: execution
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 Thompson sampling: the Beta prior at work, and the posterior as the next prior
#
# Companion to the notes 000 (beta分布: "beta分布是伯努利分布的共轭先验分布", the Beta
# distribution is the 共轭先验分布 (conjugate prior) of the Bernoulli, "应用: Thompson
# sampling"; 霍夫丁不等式 (Hoeffding's inequality) and UCB, 式5-4 and 5-5), 003 §七 (the
# apples, batch by batch) and 004 eq 2.5 (the posterior is the next prior). The story: a
# conjugate posterior is cheap enough to update after every round, and drawing from it is a
# way to decide what to try next.
#
# The notebook runs at the settings a reader gets (50 seeds of 5000 rounds); its last
# cell prints how long it took.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

import os
import tempfile
import time

import numpy as np
import pandas as pd
from IPython.display import Image, display

import zoo
from zoo.bandit import final_regret, plot_regret, regret_curves

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
pd.set_option("display.width", 200)
pd.set_option("display.precision", 4)

PROBS = (0.1, 0.2, 0.3)
HORIZON = 5000
SEEDS = 50
OUT = tempfile.mkdtemp(prefix="zoo_04_")
START = time.perf_counter()

# %% [markdown]
# ## 1. The bandit as a zoo model
#
# A K-armed Bernoulli bandit: arm $k$ pays 1 with unknown probability $p_k$. Each $p_k$ gets
# the Beta prior that the notes call the conjugate prior of the Bernoulli (000 beta分布), so
# after $s_k$ successes and $f_k$ failures its posterior is Beta($\alpha+s_k$, $\beta+f_k$).
# The history of a bandit (arms played, rewards) is data for the model `bernoulli_bandit`
# like any other, and every back-end runs on it:

# %%
print(zoo.get_model("bernoulli_bandit").doc)
history = zoo.simulate_bandit(PROBS, 300, "ucb1", seed=0)
data = {"arm": history["arm"].to_numpy(), "y": history["reward"].to_numpy()}
cmp = zoo.compare("bernoulli_bandit", backends=["exact", "svi", "importance"], data=data,
                  num_samples=1000, num_chains=2, num_steps=1000)
display(cmp.table[["backend", "seconds", "max_abs_z", "sd_ratio_min", "sd_ratio_max", "correct", "log_evidence"]])

# %% [markdown]
# ## 2. Three ways to play
#
# * **Thompson sampling** (000): draw $\tilde p_k$ from each arm's posterior and play the
#   largest draw. An arm is played with the posterior probability that it is the best.
# * **UCB1**: play every arm once, then the arm with the largest
#   $\bar X_k + \sqrt{2\ln t / n_k}$. The bonus is the notes' 霍夫丁不等式 (式5-4,
#   $P(|\bar X - \mathbb E\bar X|\ge\epsilon)\le e^{-2N\epsilon^2}$) with
#   $\epsilon=\sqrt{2\ln t/N}$: the true mean lies above the bound with probability at most
#   $t^{-4}$ (式5-5).
# * **epsilon-greedy**: a random arm with probability 0.1, else the best empirical mean.
#
# Regret is the expected reward lost to not playing the best arm,
# $\max_k p_k - p_{\text{arm}_t}$, summed over rounds. Every policy meets the same rewards
# for each arm at a given seed.

# %%
t0 = time.perf_counter()
curves = regret_curves(PROBS, HORIZON, ["thompson", "ucb1", "epsilon_greedy"], seeds=SEEDS)
print(f"{3 * SEEDS} runs of {HORIZON} rounds in {time.perf_counter() - t0:.1f} s")
final = final_regret(curves)
display(final)
display(Image(plot_regret(curves, os.path.join(OUT, "regret.png"))))

# %% [markdown]
# Is the regret growing linearly (a fixed loss per round, nothing learned) or flattening? Compare
# the regret per round in the first and the second half of the rounds, and how often each
# policy plays the best arm at the end:

# %%
half = HORIZON // 2
per_round = curves.groupby(["policy", "round"])["regret"].mean().unstack("round")
first, second = per_round.iloc[:, :half].mean(axis=1), per_round.iloc[:, half:].mean(axis=1)
best = int(np.argmax(PROBS))
late = curves[curves["round"] > HORIZON - 500]
shape = pd.DataFrame({"regret per round, first half": first, "second half": second,
                      "second / first": second / first,
                      "best arm share, last 500 rounds": late.groupby("policy")["arm"].apply(lambda a: (a == best).mean())})
display(shape)
# Chapelle & Li (2011): Thompson sampling's regret is below UCB1's on Bernoulli arms
assert final.loc["thompson", "mean"] < final.loc["ucb1", "mean"]

# %% [markdown]
# Read the table, not a slogan:
#
# * **Thompson sampling** has the lowest regret, and its regret per round falls the most
#   between the two halves: it has nearly stopped paying for exploration.
# * **UCB1** has the *largest* regret here. Its regret per round falls far more slowly than
#   Thompson sampling's, its curve above is close to a straight line after the first thousand
#   rounds, and at the end it still plays the best arm less often than either other policy. Its
#   bonus $\sqrt{2\ln t/n_k}$ comes from a worst-case bound that ignores what the rewards say
#   about each arm; at these small gaps (0.1 and 0.2) it keeps playing a bad arm until $n_k$ is of
#   order $8\ln t/\Delta_k^2$, hundreds of plays per arm. Its regret does grow like $\log T$ in
#   the end, but only over horizons far longer than this one.
# * **epsilon-greedy** explores at the fixed rate 0.1 forever, choosing among all three arms, so
#   its regret per round cannot fall below 0.1 times the average gap, $0.1\times0.1=0.01$; and it
#   sometimes locks onto a bad arm early, which widens its band.

# %%
# what the text says, as the table shows it
assert final["mean"].idxmax() == "ucb1" and shape["best arm share, last 500 rounds"].idxmin() == "ucb1"
assert shape.loc["ucb1", "second / first"] > 2 * shape.loc["thompson", "second / first"]
# epsilon-greedy's floor; over 50 x 2500 rounds the Monte Carlo se of this mean is about 3e-4
assert shape.loc["epsilon_greedy", "second half"] > 0.1 * np.mean(max(PROBS) - np.array(PROBS)) - 0.001

# %% [markdown]
# **Hoeffding's bound, checked.** For $N$ Bernoulli(0.3) rewards, how often does the mean miss
# by $\epsilon=\sqrt{2\ln t/N}$ or more? The notes' bound says at most $t^{-4}$:

# %%
rng = np.random.default_rng(0)
rows = []
for N, t in [(10, 2), (20, 2), (50, 3)]:
    eps = np.sqrt(2 * np.log(t) / N)
    means = rng.binomial(N, 0.3, size=200_000) / N
    rows.append({"N": N, "t": t, "epsilon": eps, "P(|mean - p| >= eps)": np.mean(np.abs(means - 0.3) >= eps),
                 "Hoeffding exp(-2 N eps^2)": np.exp(-2 * N * eps**2), "t^-4": t**-4.0})
hoeffding = pd.DataFrame(rows)
display(hoeffding)
assert (hoeffding["P(|mean - p| >= eps)"] <= hoeffding["t^-4"]).all()

# %% [markdown]
# ## 3. Thompson sampling on an approximate posterior
#
# The zoo's other back-ends can supply Thompson sampling's draws: the bandit refits the
# `bernoulli_bandit` posterior on the history every `refit` rounds and plays one draw per round
# until the next refit. `exact` with the same `refit` is the yardstick: the difference in
# regret is the price of the approximation, the `seconds` column its cost.

# %%
APPROX = dict(horizon=1000, refit=100, seeds=4)
frames, seconds = [], {}
for policy in ["thompson", "thompson:svi", "thompson:importance"]:
    t0 = time.perf_counter()
    frames.append(regret_curves(PROBS, APPROX["horizon"], [policy], seeds=APPROX["seeds"], refit=APPROX["refit"]))
    seconds[policy] = time.perf_counter() - t0
approx = pd.concat(frames, ignore_index=True)
approx_final = final_regret(approx).assign(seconds=pd.Series(seconds))
print(f"{APPROX['seeds']} seeds of {APPROX['horizon']} rounds per back-end, posterior refitted every "
      f"{APPROX['refit']} rounds; seconds: all seeds of one back-end")
display(approx_final)
display(Image(plot_regret(approx, os.path.join(OUT, "regret_backends.png"),
                          title=f"Thompson sampling, posterior refitted every {APPROX['refit']} rounds")))

# %% [markdown]
# On this small model SVI's mean-field guide (a Normal on each arm's logit p) and importance
# sampling through that guide both track the exact posterior closely (section 1), so their
# regret stays within the seed-to-seed spread (`sd`) of the exact sampler's: four seeds cannot
# separate them. What they add is the `seconds` column: each refit is an optimisation (and,
# for importance sampling, thousands of weighted draws) where the exact update is a count.
#
# ## 4. The posterior is the next prior (003 §七, 004 eq 2.5)
#
# `zoo.sequential_update` feeds a conjugate model batch by batch and returns the
# hyperparameters after each batch. The notes' apples: Beta(50, 50), then 8 good and 2 bad,
# then 9 good and 1 bad.

# %%
batches = [{"y": [1] * 8 + [0] * 2}, {"y": [1] * 9 + [0] * 1}]
steps = zoo.sequential_update("beta_bernoulli", batches, hyper={"alpha": 50, "beta": 50})
one_shot = zoo.sequential_update("beta_bernoulli", [{"y": batches[0]["y"] + batches[1]["y"]}],
                                 hyper={"alpha": 50, "beta": 50})
display(pd.DataFrame(steps + one_shot, index=["after batch 1", "after batch 2", "all 20 at once"]))
assert steps == [{"alpha": 58.0, "beta": 52.0}, {"alpha": 67.0, "beta": 53.0}]
assert one_shot[-1] == steps[-1]

# %% [markdown]
# The same holds for every conjugate model whose posterior stays in the prior's family. Here
# the apple sizes (`dirichlet_categorical`, 003 §七) in four uneven batches:

# %%
data, _ = zoo.simulate("dirichlet_categorical", seed=1, N=60)
cuts = [0, 5, 6, 40, 60]
size_steps = zoo.sequential_update("dirichlet_categorical", [{"x": data["x"][a:b]} for a, b in zip(cuts, cuts[1:])])
size_one_shot = zoo.sequential_update("dirichlet_categorical", [data])
display(pd.DataFrame({"batch by batch": size_steps[-1]["alpha"], "one shot": size_one_shot[-1]["alpha"]}))
assert size_steps[-1]["alpha"] == size_one_shot[-1]["alpha"]

# %%
print(f"notebook ran in {time.perf_counter() - START:.1f} s")

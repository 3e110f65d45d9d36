# ---
# jupyter:
#   execution:
#     timeout: 300
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
# # 06 Model comparison: PSIS-LOO and stacking
#
# Which model predicts new data best? The quantity to compare is the **expected log
# predictive density** of a new observation, estimated by leaving each observation out in
# turn:
#
# $$\mathrm{elpd}_{\mathrm{loo}} = \sum_{i=1}^N \log p(y_i \mid y_{-i}),\qquad
# p(y_i\mid y_{-i}) = \int p(y_i\mid\theta)\,p(\theta\mid y_{-i})\,d\theta .$$
#
# Refitting $N$ times is expensive. **PSIS-LOO** (Vehtari, Gelman and Gabry 2017) gets all
# $N$ terms from one set of posterior draws: $p(\theta\mid y_{-i}) \propto
# p(\theta\mid y)/p(y_i\mid\theta)$, so draws from the full posterior are reweighted by
# $1/p(y_i\mid\theta_s)$, and the largest weights are smoothed by a fitted Pareto tail. Its
# shape $k$ says whether that worked: above 0.7 the estimate for that observation is
# unreliable (the observation pulls the posterior too far).
#
# `zoo.compare_models` fits each model (or hyperparameter setting) to the same data with the
# same back-end and ranks them with `az.compare`: `elpd_loo` and its standard error `se`,
# `elpd_diff` to the best with the standard error of the difference `dse` (a difference of
# a few `dse` is real, one `dse` is noise), `p_loo` (the effective number of parameters) and
# the **stacking weights** (Yao et al. 2018): the weights of the mixture of the models'
# predictive distributions that predicts best under LOO. They are not posterior model
# probabilities: two models that predict equally well can share the weight.

# %%
import time
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from scipy import stats

import zoo
from zoo.models import bayesian_linear_regression as blr

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
pd.set_option("display.width", 200)
pd.set_option("display.precision", 3)

MIXTURE = dict(num_steps=600, converge=False, num_samples=250)
NUTS = dict(num_samples=500, num_warmup=300)
COLUMNS = ["rank", "elpd_loo", "se", "elpd_diff", "dse", "p_loo", "weight", "loo_k_bad", "seconds"]
START = time.perf_counter()

# %% [markdown]
# ## 1. PSIS-LOO against the exact leave-one-out predictive
#
# First a check that the estimate is right. Under the Gaussian prior the regression's
# posterior is Gaussian, so $p(y_i\mid y_{-i})$ has a closed form: the posterior predictive
# (004 eq 2.9) of the model fitted to the other $N-1$ points. PSIS-LOO from 4000 exact
# posterior draws must agree with the sum of the $N$ exact terms to Monte Carlo error.

# %%
rng = np.random.default_rng(2)
N, D = 40, 8
X = rng.normal(size=(N, D))
w_true = np.zeros(D)
w_true[:2] = [2.5, -1.5]  # two strong effects, six that are zero
y = X @ w_true + rng.normal(size=N)
data = {"X": X, "y": y}
hyper = {"sigma": 1.0, "s": 1.0}

exact_i = []
for i in range(N):
    rest = {"X": np.delete(X, i, 0), "y": np.delete(y, i)}
    mean, sd = blr.posterior_predictive(rest, hyper, X[i])
    exact_i.append(stats.norm.logpdf(y[i], mean[0], sd[0]))
exact_elpd = float(np.sum(exact_i))



def loo_mcse(result):
    """Monte Carlo standard error of the importance-sampling LOO total (delta method over the
    draws, inflated by draws / ESS for Markov chains)."""
    ll = result.idata.log_likelihood["y"].values.reshape(-1, N)
    r = np.exp(-(ll - ll.min(0)))  # 1 / p(y_i | theta_s), rescaled per point
    iid = (r / r.mean(0)).sum(1).std(ddof=1) / np.sqrt(len(r))
    return iid * np.sqrt(len(r) / min(len(r), result.diagnostics["ess_bulk_min"]))


res = zoo.run("bayesian_linear_regression", "exact", data=data, seed=0)
d = res.diagnostics
print(f"exact leave-one-out: {exact_elpd:.3f};  PSIS-LOO from {res.idata.posterior.sizes['draw']} draws: "
      f"{d['elpd_loo']:.3f} +- {loo_mcse(res):.3f} (Monte Carlo error; se of elpd {d['elpd_loo_se']:.2f}, "
      f"largest Pareto k {d['loo_k_max']:.2f})")
assert abs(d["elpd_loo"] - exact_elpd) < 4 * loo_mcse(res) and d["loo_k_bad"] == 0

# %% [markdown]
# ## 2. How many components? A mixture with K = 1..5
#
# 150 points from a mixture of three Gaussians on a line (`zoo.simulate` with `K=3`), and
# the same data fitted by `gaussian_mixture` with K = 1 to 5 components under `enum`: the
# assignments are summed out exactly (TraceEnum_ELBO) and a mean-field guide covers the
# weights, locations and scales. LOO then reweights those variational draws; the Pareto
# $k$ column says where that is not good enough.

# %%
x_data, x_truth = zoo.simulate("gaussian_mixture", seed=1, N=150, D=1, hyper={"K": 3})
mixtures = zoo.compare_models([("gaussian_mixture", {"K": k}) for k in range(1, 6)], backend="enum",
                              data=x_data, seed=0, progress=False, **MIXTURE)
display(mixtures.table[COLUMNS])
fig = mixtures.plot()
plt.show()

# %% [markdown]
# One component is far off. Two of the three true components overlap (locations near -0.8
# and -1.7), and K = 2 merges them: it is worse by several standard errors of the difference,
# not by a hundred. Beyond three, the extra components have nothing to explain: they add
# parameters (`p_loo` grows with every component) and predict slightly worse. The stacking
# weight goes to the three-component model.

# %%
table = mixtures.table
best = table.index[0]
k3 = "gaussian_mixture(K=3)"
print(f"best: {best}; K=3 is {table.loc[k3, 'elpd_diff']:.2f} +- {table.loc[k3, 'dse']:.2f} below it")
assert table.loc["gaussian_mixture(K=1)", "elpd_diff"] > 4 * table.loc["gaussian_mixture(K=1)", "dse"]
assert table.loc["gaussian_mixture(K=2)", "elpd_diff"] > 2 * table.loc["gaussian_mixture(K=2)", "dse"]
assert table.loc[["gaussian_mixture(K=1)", "gaussian_mixture(K=2)"], "weight"].sum() < 0.05
assert table.loc[k3, "elpd_diff"] <= 2 * max(table.loc[k3, "dse"], 1e-9)  # the best, or as good within noise
assert table.loc[["gaussian_mixture(K=3)", "gaussian_mixture(K=4)", "gaussian_mixture(K=5)"], "weight"].sum() > 0.9
assert abs(table["weight"].sum() - 1) < 1e-6

# %% [markdown]
# Is the chosen model calibrated? The LOO probability integral transform of each point,
# $\Pr(\tilde y_i \le y_i \mid y_{-i})$, is uniform when the predictive is right: its ECDF
# minus the uniform CDF stays inside the band. (The replicated data draw each point's
# component afresh, as the log-likelihood sums it out: replicating a point from the component
# inferred from the point itself would make every predictive too sharp, and the LOO-PIT
# S-shaped.) The posterior predictive check puts the data's density among 100 replicated
# data sets.

# %%
chosen = mixtures.results[k3]
fig = chosen.plot("loo_pit")
plt.show()
fig = chosen.plot("ppc")
plt.show()

# %% [markdown]
# ## 3. Normal or Laplace prior on the regression weights?
#
# The data of section 1 have two strong effects and six zeros. A Laplace prior (the lasso's
# L1 penalty, 001) puts more mass near zero and in the tails than a Normal prior of the same
# scale (ridge, L2). Both fitted by NUTS, 4 chains:

# %%
priors = zoo.compare_models(["bayesian_linear_regression", ("bayesian_linear_regression", {"prior": "laplace"})],
                            backend="nuts", data=data, seed=0, progress=False, **NUTS)
display(priors.table[COLUMNS])
fig = priors.plot()
plt.show()

# %% [markdown]
# The difference is about one standard error of the difference: with 40 points LOO cannot
# tell the two priors apart, and the stacking weights are split rather than all on one. That
# is an answer too: the choice of prior shrinkage matters little for prediction here,
# although it changes the posterior of the zero weights (the Laplace posterior is more
# peaked at zero). The Gaussian-prior fit agrees with the exact LOO of section 1.

# %%
ptable = priors.table
diff = float(ptable["elpd_diff"].iloc[1])
dse = float(ptable["dse"].iloc[1])
print(f"elpd difference {diff:.2f} +- {dse:.2f}")
assert diff < 3 * dse  # not distinguishable
gauss = priors.results["bayesian_linear_regression"].diagnostics
gauss_result = priors.results["bayesian_linear_regression"]
assert abs(gauss["elpd_loo"] - exact_elpd) < 4 * loo_mcse(gauss_result)
assert all(r.diagnostics["r_hat_max"] < 1.01 for r in priors.results.values())

# %% [markdown]
# ## 4. What LOO refuses
#
# LOO needs posterior draws of the model's global parameters. A point estimate (EM, a MAP
# guide) has none, and `compare_models` says so instead of returning a number:

# %%
try:
    zoo.compare_models([("gaussian_mixture", {"K": 2}), ("gaussian_mixture", {"K": 3})], backend="em",
                       data=x_data, num_samples=10)
except zoo.ZooError as e:
    print("ZooError:", e)
    assert "point estimate" in str(e)
else:
    raise AssertionError("EM must be refused")
print(f"notebook ran in {time.perf_counter() - START:.0f} s")

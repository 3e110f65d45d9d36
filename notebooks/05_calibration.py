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
# # 05 Calibration: simulation-based calibration (SBC) and grids
#
# A back-end can look fine on one data set and still be wrong on average. **Simulation-based
# calibration** (Talts et al. 2018) checks a back-end against the model itself, with no
# closed form needed:
#
# 1. draw parameters $\tilde\theta \sim p(\theta)$ from the prior and data
#    $\tilde y \sim p(y\mid\tilde\theta)$ (`zoo.simulate(name, seed=s)`);
# 2. run the back-end on $\tilde y$ and keep $L$ evenly spaced posterior draws;
# 3. the **rank** of $\tilde\theta$ among them (how many draws fall below it) is uniform on
#    $0..L$ when the posterior is right, because averaging the 后验分布 (posterior) over the
#    prior predictive gives back the 先验分布 (prior) (004 eqs 2.1-2.5, Bayes' rule read
#    backwards).
#
# Too narrow a posterior piles the ranks at both ends (a U), too wide a one in the middle, a
# biased one to one side. `zoo.sbc` tests uniformity per scalar with a chi-square test over
# bins of at least 5 expected ranks (Bonferroni over the scalars) and draws rank histograms
# and ECDF-difference plots with simultaneous bands (Säilynoja et al. 2022).
#
# The notebook runs at the settings a reader gets (200 simulations, ranks among 99 draws);
# its last cell prints how long it took.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

import dataclasses
import os
import tempfile
import time

import numpy as np
import pandas as pd
from IPython.display import Image, display
from scipy import stats

import zoo
from zoo import registry
from zoo.core.spec import exact_from_scipy
from zoo.grids import TIMING_COLUMNS
from zoo.models import normal_known_variance as nkv

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
pd.set_option("display.width", 200)
pd.set_option("display.precision", 4)

SIMULATIONS, DRAWS = 200, 99
OUT = tempfile.mkdtemp(prefix="zoo_05_")
START = time.perf_counter()

# %% [markdown]
# ## 1. A passing case: the exact posterior of `normal_gamma`
#
# The closed-form Normal-Gamma posterior (004 §2.1.3) is right by construction, so its ranks
# must look uniform for both `mu` and `tau`.

# %%
good = zoo.sbc("normal_gamma", "exact", num_simulations=SIMULATIONS, num_draws=DRAWS, seed=0, progress=False)
print(good.tests.to_string(index=False))
print("passed:", good.passed, f"(threshold {good.threshold:.3g} = 0.01 / {len(good.tests)} scalars)")
assert good.passed
for f in good.plot(os.path.join(OUT, "good")):
    display(Image(filename=str(f)))

# %% [markdown]
# The rank of a simulation is itself a check: given the truth, it is Binomial(L, F(truth)) with
# F the exact posterior CDF. For `normal_known_variance` that CDF is a Normal one (scipy):

# %%
check = zoo.sbc("normal_known_variance", "exact", num_simulations=SIMULATIONS, num_draws=DRAWS, seed=1,
                progress=False)
h = {k: v.default for k, v in zoo.get_model("normal_known_variance").hyper.items()}
pit = []
for s in range(SIMULATIONS):
    data, truth = zoo.simulate("normal_known_variance", seed=1 + s)
    mu_n, sd_n = nkv.posterior_params(data["x"], h["mu0"], h["sigma0"], h["sigma"])
    pit.append(stats.norm(mu_n, sd_n).cdf(truth["mu"]))
pit = np.array(pit)
ranks = check.rank_matrix()["mu"].to_numpy()
err = np.abs(ranks - DRAWS * pit) / np.sqrt(DRAWS * pit * (1 - pit) + 1)
print(f"largest |rank - L F(truth)| in binomial sds: {err.max():.2f}")
assert err.max() < 4.5 and check.passed

# %% [markdown]
# ## 2. A failing case: a posterior half as wide as it should be
#
# To show that the test can fail, we register a copy of `normal_known_variance` whose "exact"
# posterior has the right mean but half the right standard deviation: an over-confident
# back-end, like a mean-field approximation that under-disperses, only worse. Its central 50%
# interval covers the truth about 26% of the time instead of 50%.

# %%
def overconfident_exact(data, hyper):
    right = nkv.exact(data, hyper)
    return exact_from_scipy({"mu": stats.norm(right.mean["mu"], right.sd["mu"] / 2)})


registry.MODELS["overconfident_normal"] = dataclasses.replace(
    nkv.SPEC, name="overconfident_normal", reference=dataclasses.replace(nkv.SPEC.reference, exact=overconfident_exact))
bad = zoo.sbc("overconfident_normal", "exact", num_simulations=SIMULATIONS, num_draws=DRAWS, seed=0,
              progress=False)
print(bad.tests.to_string(index=False))
r = bad.ranks["rank"].to_numpy()
outer = np.mean((r < 0.1 * (DRAWS + 1)) | (r >= 0.9 * (DRAWS + 1)))
print(f"passed: {bad.passed}; share of ranks in the outer 20% of 0..L: {outer:.2f} (uniform: 0.20)")
assert not bad.passed and bad.tests["reading"].iloc[0] == "posterior too narrow (U-shaped ranks)"
for f in bad.plot(os.path.join(OUT, "bad")):
    display(Image(filename=str(f)))
del registry.MODELS["overconfident_normal"]

# %% [markdown]
# The histogram is the U of an over-confident posterior, and the ECDF difference leaves its
# simultaneous band: the ECDF rises too fast at low ranks and too slowly at high ones. The
# `reading` column says so in words, from the ranks' mean (`mean_rank`, rank / L, 0.5 when
# calibrated) and spread (`rank_sd_ratio`, the ranks' sd over a uniform rank's: 1 when
# calibrated, above 1 a U). It is not the comparison table's `sd_ratio`, the posterior's sd over
# the exact one, where an over-confident posterior reads *below* 1.
#
# ## 3. Grids, files and Ray
#
# `zoo.grid(models, backends, seeds)` runs every combination and returns one long table (the
# `compare` row of each run, with `model` and `seed`). With `out=` every task is written to
# `out/<model>/<backend>/<seed>.json` as soon as it finishes, atomically; a re-run reads those
# files instead of running again, so an interrupted grid resumes. `executor="ray"` fans the
# tasks out on a local Ray (or a cluster with `address=`), with the same numbers, because the
# task's seed fixes everything (`pip install "pyro-model-zoo[ray]"`). SBC uses the same tasks.

# %%
tasks = os.path.join(OUT, "grid")
g = zoo.grid(["beta_bernoulli", "poisson_gamma"], ["exact", "importance"], seeds=2, out=tasks,
             progress=False, num_samples=500)
print(g.table[["model", "backend", "seed", "draws", "max_abs_z", "sd_ratio_min", "sd_ratio_max",
               "log_evidence"]].to_string(index=False))
again = zoo.grid(["beta_bernoulli", "poisson_gamma"], ["exact", "importance"], seeds=2, out=tasks,
                 progress=False, num_samples=500)
cols = [c for c in g.table if c not in TIMING_COLUMNS]
assert again.table[cols].equals(g.table[cols])  # read back from the files, not re-run
print(f"notebook ran in {time.perf_counter() - START:.0f} s")

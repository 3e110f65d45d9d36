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
# # 01 Conjugate models: exact posteriors, and what approximations lose
#
# Companion to the notes 004 §2.1.3 (共轭分布, conjugate distributions), §2.2.3 (均场近似,
# the mean field approximation), §2.1.4 (最大后验估计, MAP) and 003 §七 (先验分布与后验分布,
# prior and posterior: the apples). The story: when the 先验 (prior) is conjugate to the
# 似然 (likelihood), the 后验 (posterior) is known exactly, so every approximate back-end can
# be scored against it, and we can watch exactly what mean field loses.
#
# The notebook runs at the settings a reader gets (the zoo's defaults: NUTS with 4 chains of
# 1000 draws); its last cell prints how long it took.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display
from scipy import stats
from sklearn.linear_model import Ridge

import zoo
from zoo.models import bayesian_linear_regression as blr
from zoo.models import normal_gamma as ng

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
pd.set_option("display.width", 200)
pd.set_option("display.precision", 4)

SEED = 0  # the same seed gives the same numbers
START = time.perf_counter()

# %% [markdown]
# ## 1. What conjugacy means
#
# Bayes' rule (004 eq 2.11) needs the 证据 (evidence) $\int p(\theta)p(X\mid\theta)\,d\theta$,
# an integral that usually has no closed form. A prior $p(\theta)\in\mathcal A(\alpha)$ is
# **共轭 (conjugate)** to a likelihood $p(X\mid\theta)\in\mathcal B(\beta)$ when the posterior
# stays in the same 分布族 (distribution family), $p(\theta\mid X)\in\mathcal A(\alpha')$ (eq 2.10). Then we never
# integrate: we multiply, $p(\theta\mid X)\propto p(\theta)p(X\mid\theta)$ (eq 2.12), read
# off the new parameters $\alpha'$, and the family's own normaliser does the rest.
#
# The zoo has one model per row of the notes' table of 常见的共轭分布 (common conjugate pairs).
# Each carries its exact posterior, the yardstick for every approximate back-end.

# %%
CONJUGATE = ["beta_bernoulli", "normal_known_variance", "normal_known_mean", "normal_gamma",
             "mvn_wishart", "dirichlet_categorical", "poisson_gamma", "uniform_pareto",
             "bayesian_linear_regression"]
models_table = pd.DataFrame([
    {"model": name,
     "latent sites": ", ".join(zoo.get_model(name).latent_sites),
     "data keys": ", ".join(zoo.get_model(name).data),
     "seed section": zoo.get_model(name).seed_section}
    for name in CONJUGATE])
with pd.option_context("display.max_colwidth", 90):
    display(models_table)

# %% [markdown]
# ## 2. The apples (003 §七): the posterior of one batch is the prior of the next
#
# $p$ is the probability that an apple is good (好苹果). The prior Beta(50, 50) says "as if we had
# already seen 50 good and 50 bad apples" (50个好苹果和50个坏苹果). For Bernoulli data the posterior is
# Beta($\alpha$ + good, $\beta$ + bad): the parameters simply count apples.
#
# * batch 1: 8 good, 2 bad: Beta(50, 50) → Beta(58, 52)
# * batch 2: 9 good, 1 bad: Beta(58, 52) → Beta(67, 53)
#
# Updating batch by batch (004 eq 2.5: yesterday's posterior is today's prior) must give the
# same answer as one update with all 20 apples. The evidences chain the same way:
# $p(D_1, D_2) = p(D_1)\,p(D_2\mid D_1)$.

# %%
bb = zoo.get_model("beta_bernoulli").reference
batch1 = {"y": np.array([1] * 8 + [0] * 2)}
batch2 = {"y": np.array([1] * 9 + [0] * 1)}
both = {"y": np.concatenate([batch1["y"], batch2["y"]])}

prior = {"alpha": 50.0, "beta": 50.0}
post1 = bb.exact(batch1, prior)
post2 = bb.exact(batch2, {"alpha": post1.extra["alpha_n"], "beta": post1.extra["beta_n"]})
one_shot = bb.exact(both, prior)

apples = pd.DataFrame([
    {"step": "prior", "alpha": 50.0, "beta": 50.0},
    {"step": "after batch 1 (8 good, 2 bad)", "alpha": post1.extra["alpha_n"], "beta": post1.extra["beta_n"]},
    {"step": "after batch 2 (9 good, 1 bad)", "alpha": post2.extra["alpha_n"], "beta": post2.extra["beta_n"]},
    {"step": "all 20 apples at once", "alpha": one_shot.extra["alpha_n"], "beta": one_shot.extra["beta_n"]},
])
apples["E[p]"] = apples["alpha"] / (apples["alpha"] + apples["beta"])
display(apples)

# the notes' numbers, exactly: 58 good and 52 bad, then 67 and 53, batch by batch or at once
assert (post1.extra["alpha_n"], post1.extra["beta_n"]) == (58.0, 52.0)
assert (post2.extra["alpha_n"], post2.extra["beta_n"]) == (67.0, 53.0) == \
    (one_shot.extra["alpha_n"], one_shot.extra["beta_n"])
print(f"log p(D1) + log p(D2 | D1) = {post1.log_evidence + post2.log_evidence:.6f}; "
      f"log p(D1, D2) = {one_shot.log_evidence:.6f}")

# %%
p = np.linspace(0.3, 0.75, 400)
fig, ax = plt.subplots(figsize=(7, 3.5))
for (a, b), label in [((50, 50), "prior Beta(50, 50)"), ((58, 52), "after 10 apples: Beta(58, 52)"),
                      ((67, 53), "after 20 apples: Beta(67, 53)")]:
    ax.plot(p, stats.beta(a, b).pdf(p), label=label)
ax.set_xlabel("p (probability that an apple is good)")
ax.set_ylabel("posterior density")
ax.set_title("The apples: each batch's posterior is the next prior")
ax.legend(loc="upper right")
plt.show()

# %% [markdown]
# Each batch moves the density towards the observed share of good apples (0.8, 0.9) and
# narrows it. The prior's 100 pseudo-apples still dominate 20 real ones: the larger the prior
# counts, the more the prior rules (003 §七).

# %% [markdown]
# ## 3. Mean field against the exact answer: `normal_gamma`
#
# Normal data with unknown mean $\mu$ and precision $\tau$ (004 §2.1.3 row 3):
# $\tau\sim\mathrm{Gamma}(a_0,b_0)$, $\mu\mid\tau\sim N(\mu_0, 1/(\kappa_0\tau))$,
# $x_i\sim N(\mu, 1/\tau)$. The posterior is Normal-Gamma with parameters
# $(\mu_n,\kappa_n,a_n,b_n)$; $\mu$'s marginal is a Student-t.
#
# We fit it six ways on $N = 6$ points (few data, so the differences are large):
# the exact posterior, NUTS, SVI with a mean-field and a full-rank Gaussian guide, the notes'
# own coordinate-ascent mean field (`cavi`, eq 2.17), and importance sampling.

# %%
N = 6
data, truth = zoo.simulate("normal_gamma", seed=0, N=N)
print("x =", np.round(data["x"], 3), " truth:", {k: round(float(v), 3) for k, v in truth.items()})

backends = ["exact", "nuts", "svi", "svi:full_rank", "cavi", "importance"]
cmp = zoo.compare("normal_gamma", backends=backends, data=data, seed=SEED)
cols = ["backend", "seconds", "ess_bulk_min", "max_abs_z", "sd_ratio_min", "sd_ratio_max", "w1_max",
        "elbo", "elbo_gap", "log_evidence", "pareto_k", "correct"]
display(cmp.table[cols])

# %% [markdown]
# How to read the table (every score compares the back-end's draws with the exact posterior):
#
# * `max_abs_z`: the worst error in a posterior mean, in posterior sds,
#   $|\bar\theta - \mathbb E[\theta]| / \mathrm{sd}(\theta)$. Below 0.25 counts as right.
# * `sd_ratio_min` / `sd_ratio_max`: the smallest and largest sd(back-end) / sd(exact) over the
#   latent scalars. Below 1 means too narrow (over-confident).
# * `w1_max`: the largest Wasserstein-1 distance between the back-end's draws and exact draws,
#   in sd units: it sees shape errors (tails, skew) that a mean and an sd miss.
# * `elbo`: the 证据下界 (evidence lower bound) $\mathcal L(q)$ of a 变分推断 (variational
#   inference) fit (004 §2.2.2);
#   `elbo_gap` = log evidence − ELBO = KL(q ‖ posterior) ≥ 0, how far q is from the truth.
# * `log_evidence`: $\log p(X)$, exact for `exact`, estimated by `importance`.
# * `correct`: |z| < 0.25 and every sd ratio within 0.9–1.1 (the DESIGN.md yardstick).
#
# The `exact` row scores independent draws from the closed form: it shows the Monte Carlo
# noise floor of the scores themselves.
#
# The scores per scalar are in `cmp.scalars`:

# %%
sc = cmp.scalars.set_index(["backend", "name"])
display(sc[["mean", "sd", "exact_mean", "exact_sd", "z", "sd_ratio", "w1", "ess_bulk"]])

# %% [markdown]
# **What 均场近似 (mean field) cannot hold.** Given $\tau$, the exact posterior of $\mu$ is
# $N(\mu_n, 1/(\kappa_n\tau))$: its *spread* depends on $\tau$ (a funnel in the plot below),
# though $\mu$ and $\tau$ are uncorrelated. A factorised $q(\mu)q(\tau)$ must pick one spread
# for $\mu$. The CAVI fixed point picks $\mathrm{Var}_q(\mu) = 1/(\kappa_n\,\mathbb E_q[\tau])
# = b_n/(\kappa_n a_n)$, while averaging over $\tau$ gives the true
# $\mathrm{Var}(\mu) = \mathbb E[1/(\kappa_n\tau)] = b_n/(\kappa_n (a_n-1))$ (Student-t tails).
# So the sd ratio is $\sqrt{1-1/a_n}$, here $\sqrt{4/5}\approx 0.894$; it tends to 1 as
# $N$ grows ($a_n = a_0 + N/2$).
#
# A full-rank Gaussian over $(\mu, \log\tau)$ can add a correlation, but there is none to
# add, so it lands in the same place as mean field. NUTS is not restricted to a family and
# comes out near 1. Importance sampling reweights a mean-field guide: it recovers most of the
# missing spread, but not always all of it (see `pareto_k` below).

# %%
h = {k: v.default for k, v in zoo.get_model("normal_gamma").hyper.items()}
exact_post = ng.exact(data, h)
q = ng.cavi(data["x"], h["mu0"], h["kappa0"], h["a0"], h["b0"])
e_tau = q["a_N"] / q["b_N"]
exact_var_mu = float(exact_post.sd["mu"]) ** 2
mu_n, kappa_n, a_n, b_n = (exact_post.extra[k] for k in ("mu_n", "kappa_n", "a_n", "b_n"))
closed_ratio = np.sqrt((1 / ((h["kappa0"] + N) * e_tau)) / exact_var_mu)
print(f"a_n = {a_n}, E_q[tau] = {e_tau:.6f} (exact E[tau] = a_n/b_n = {a_n / b_n:.6f})")
print(f"CAVI sd ratio of mu, closed form: {closed_ratio:.6f}  sqrt(1 - 1/a_n) = {np.sqrt(1 - 1 / a_n):.6f}")

# the CAVI fixed point's sd ratio of mu is the closed form sqrt(1 - 1/a_n)
assert abs(closed_ratio - np.sqrt(1 - 1 / a_n)) < 1e-6
cavi_gap = cmp.table.set_index("backend").loc["cavi", "elbo_gap"]
print(f"CAVI: measured sd ratio of mu {sc.loc[('cavi', 'mu'), 'sd_ratio']:.3f} from "
      f"{cmp.table.set_index('backend').loc['cavi', 'draws']} draws; "
      f"ELBO gap = KL(q || posterior) = {cavi_gap:.4f} nats")

# %% [markdown]
# Every back-end's sd ratio of $\mu$ beside the closed form of the mean-field optimum. SVI's
# Gaussian guides land near CAVI's answer (stochastic optimisation and 4000 draws move it by a
# few hundredths); NUTS, which is bound to no family, comes out near 1, and its chains agree
# (`r_hat_max` below 1.01, the DESIGN.md yardstick):

# %%
ratio_mu = sc.xs("mu", level="name")["sd_ratio"]
display(ratio_mu.to_frame("sd ratio of mu").assign(closed_form_mean_field=closed_ratio))
assert cmp.table.set_index("backend").loc["nuts", "r_hat_max"] < 1.01

# %% [markdown]
# **The picture.** Blue: the exact joint posterior of $(\mu,\tau)$. Orange: draws from
# CAVI's $q(\mu)q(\tau)$ (`Result.draws`) and its contours. The exact posterior narrows in
# $\mu$ as $\tau$ grows (the funnel); $q$ has the same width at every $\tau$. Right:
# $\mu$'s marginal, a Student-t, against CAVI's narrower normal.

# %%
mu_draws, tau_draws = cmp.results["cavi"].draws("mu"), cmp.results["cavi"].draws("tau")
mg, tg = np.meshgrid(np.linspace(mu_n - 4 * np.sqrt(exact_var_mu), mu_n + 4 * np.sqrt(exact_var_mu), 200),
                     np.linspace(1e-3, stats.gamma(a_n, scale=1 / b_n).ppf(0.999), 200))
log_joint = stats.gamma.logpdf(tg, a_n, scale=1 / b_n) + stats.norm.logpdf(mg, mu_n, 1 / np.sqrt(kappa_n * tg))

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
log_q = (stats.norm.logpdf(mg, q["mu_N"], 1 / np.sqrt(q["lam_N"]))
         + stats.gamma.logpdf(tg, q["a_N"], scale=1 / q["b_N"]))
ax1.contourf(mg, tg, np.exp(log_joint), levels=12, cmap="Blues")
ax1.contour(mg, tg, np.exp(log_q), levels=6, colors="tab:orange", linewidths=1)
ax1.scatter(mu_draws[:300], tau_draws[:300], s=3, color="tab:orange", alpha=0.7, label="CAVI draws and q contours")
ax1.set_xlabel("mu")
ax1.set_ylabel("tau")
ax1.legend(loc="upper right")
ax1.set_title("exact joint posterior and q(mu) q(tau)")
m = mg[0]
ax2.plot(m, stats.t(2 * a_n, loc=mu_n, scale=np.sqrt(b_n / (a_n * kappa_n))).pdf(m), label="exact (Student-t)")
ax2.plot(m, stats.norm(q["mu_N"], 1 / np.sqrt(q["lam_N"])).pdf(m), "--", label="CAVI q(mu)")
ax2.hist(cmp.results["nuts"].draws("mu"), bins=40, density=True, alpha=0.3, label="NUTS draws")
ax2.set_xlabel("mu")
ax2.set_ylabel("density")
ax2.legend()
ax2.set_title("marginal posterior of mu")
plt.show()

# %% [markdown]
# The zoo's own plots of every back-end against the exact one (`cmp.plot`):

# %%
plot_dir = tempfile.mkdtemp()
for png in cmp.plot(plot_dir):
    display(Image(filename=str(png)))

# %% [markdown]
# Importance sampling here proposes from a mean-field guide, which has lighter tails than the
# Student-t posterior; the weights then have a heavy tail, which the `pareto_k` column
# measures (above 0.7: do not trust the estimate, whatever it says).
#
# ## 4. When the posterior *is* correlated: Bayesian linear regression
#
# $y\sim N(Xw, \sigma^2 I)$ with $w\sim N(0, s^2 I)$ (004 §2.1.2) has a Gaussian posterior
# $N(m, S)$. If two covariates are nearly collinear, their weights are strongly
# anti-correlated in the posterior. A mean-field Gaussian then gets the means right but gives
# each $w_j$ the sd $1/\sqrt{(S^{-1})_{jj}}$, the *conditional* sd, much smaller than the
# marginal $\sqrt{S_{jj}}$. Here a full-rank guide does fix it.

# %%
rng = np.random.default_rng(0)
n_obs, corr = 50, np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]])
X = rng.normal(size=(n_obs, 3)) @ np.linalg.cholesky(corr).T  # columns 0 and 1 correlated
y = X @ np.array([1.0, -0.5, 0.25]) + rng.normal(size=n_obs)  # sigma = 1
blr_data = {"X": X, "y": y}
blr_h = {"sigma": 1.0, "s": 1.0}

cmp2 = zoo.compare("bayesian_linear_regression", backends=["exact", "svi", "svi:full_rank"],
                   data=blr_data, seed=SEED)
display(cmp2.table[cols])

m_exact, S = blr.posterior_params(X, y, **blr_h)
mf_ratio = 1 / np.sqrt(np.diag(np.linalg.inv(S)) * np.diag(S))  # mean-field sd / exact sd
ratios = cmp2.scalars.pivot(index="name", columns="backend", values="sd_ratio")
ratios["mean field, closed form"] = mf_ratio
print("posterior correlation of w[0], w[1]:", round(S[0, 1] / np.sqrt(S[0, 0] * S[1, 1]), 3))
display(ratios)

# The mean-field optimum q = N(m, diag(1 / Lambda_jj)) has KL(q || p) = 0.5 log(prod Lambda_jj det S)
# in closed form: the ELBO gap mean-field SVI should show (tests/test_walkthrough_claims.py
# checks both against the zoo within their Monte Carlo error).
Lam = np.linalg.inv(S)
kl_mf = 0.5 * np.log(np.prod(np.diag(Lam)) * np.linalg.det(S))
gaps2 = cmp2.table.set_index("backend")["elbo_gap"]
print(f"mean-field KL, closed form {kl_mf:.3f}; measured ELBO gaps: svi {gaps2['svi']:.3f}, "
      f"full rank {gaps2['svi:full_rank']:.3f}")

# %% [markdown]
# **最大后验估计 (MAP) is 岭回归 (ridge regression) (004 §2.1.4, 001).** With a Gaussian prior, maximising
# $\log p(y\mid X,w) + \log p(w)$ is least squares plus an L2 penalty
# $\frac{\sigma^2}{s^2}\lVert w\rVert^2$ (L2 正则化, regularisation): ridge regression with `alpha = sigma**2 / s**2`.
# The `delta` guide (a point mass) finds the MAP by SVI; for a Gaussian posterior it is also
# the posterior mean.

# %%
map_fit = zoo.run("bayesian_linear_regression", "svi", data=blr_data, guide="delta", seed=SEED)
w_map = map_fit.draws("w").mean(axis=0)
w_ridge = Ridge(alpha=blr_h["sigma"] ** 2 / blr_h["s"] ** 2, fit_intercept=False).fit(X, y).coef_
display(pd.DataFrame({"SVI delta (MAP)": w_map, "sklearn Ridge": w_ridge, "exact posterior mean": m_exact},
                     index=[f"w[{j}]" for j in range(3)]))
assert np.allclose(w_map, w_ridge, atol=1e-3)  # the same point, up to the optimiser's stopping error

# %%
elapsed = time.perf_counter() - START
print(f"notebook ran in {elapsed:.0f} s")

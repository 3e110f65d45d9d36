# ---
# jupyter:
#   execution:
#     timeout: 600
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
# # 02 Latent structure: mixtures, PPCA, Dirichlet processes and state-space models
#
# Companion to the notes 004 §3.1–3.3 (潜变量模型, latent variable models; the EM algorithm;
# categorical latent variables; mixture PCA), §2.3 (Dirichlet process mixture model:
# stick-breaking, the Pólya urn, Gibbs sampling) and §1.4 (the State-Space model). The story:
# a 潜变量 (latent variable) explains each data point; summing it out exactly (EM's E step,
# enumeration, the Kalman smoother) is what makes these models tractable, and each section
# shows what an approximate back-end gets right and where it goes wrong, against an
# independent reference (scikit-learn, a closed form, the Kalman smoother).
#
# The notebook runs at the settings a reader gets; its last cell prints how long it took.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from scipy import stats
from sklearn.mixture import GaussianMixture

import zoo
from zoo.models import dp_mixture as dpm
from zoo.models import gaussian_mixture as gm
from zoo.models import ppca

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)
pd.set_option("display.width", 200)
pd.set_option("display.precision", 4)
pd.set_option("display.max_columns", 30)

SEED = 0  # the same seed gives the same numbers
START = time.perf_counter()

# %% [markdown]
# ## 1. A Gaussian mixture three ways: EM, enumeration, importance sampling
#
# A 潜变量模型 (latent variable model, 004 §3.1) explains each data point $x_i$ through an
# unobserved $z_i$. For a 混合模型 (mixture model, 004 §2.3.2) $z_i\in\{1,\dots,K\}$ says which
# 成分 (component) made $x_i$, and the likelihood sums it out (eq 3.4):
#
# $$p(x_i\mid\theta)=\sum_k p(x_i\mid z_i=k,\theta)\,p(z_i=k\mid\theta)
#   =\sum_k \pi_k\,\mathcal N(x_i\mid\mu_k,\mathrm{diag}\,\sigma_k^2).$$
#
# **EM** (§3.2) maximises $\log p(X\mid\theta)$ by 区块坐标更新 (block-coordinate updates) on the lower bound
# $\mathcal L(q,\theta)$ (eq 3.2): the E step sets $q(z_i=k)$ to the exact posterior
# $p(z_i=k\mid x_i,\theta)$ (eq 3.5, the *responsibilities*), the M step maximises
# $\sum_i\sum_k q(z_i=k)\log p(x_i,z_i=k\mid\theta)$ (eq 3.6), in closed form here. The
# bound never decreases.
#
# The zoo's `gaussian_mixture` puts priors on $\theta$ (Dirichlet weights, Normal locs, Gamma
# scales) so that Bayesian back-ends apply too:
#
# * `em`: the notes' EM (maximum likelihood, the priors are ignored; best of k-means++ starts);
# * `enum`: variational inference with the discrete $z_i$ summed out exactly
#   (`TraceEnum_ELBO`), the assignments redrawn from their exact conditional (`infer_discrete`);
# * `importance`: importance sampling (004 §1.2, 002 §5) of the continuous parameters from a
#   fitted guide, with the $z_i$ summed out in every weight.
#
# NUTS can run this model too (the $z_i$ enumerated inside its potential), but the model leaves
# it out of its default comparison, and so do we; the model's own reason:

# %%
print(zoo.get_model("gaussian_mixture").backends.skip_by_default["nuts"])

# %% [markdown]
# It is not only slow. A mixture posterior has separated modes, and a chain can settle in one
# where two components share a cluster: an HMC trajectory cannot cross the valley of low density
# between modes. Several chains and r_hat expose that (tests/test_gaussian_mixture.py runs NUTS
# on a small mixture); a single chain would not. EM and enumeration sum the assignments out
# exactly and are the tools to trust here.
#
# We simulate 150 points in two dimensions from three well separated components.

# %%
GMM_TRUTH = {"weights": np.array([0.35, 0.40, 0.25]),
             "locs": np.array([[-4.0, 0.0], [0.0, 3.0], [4.0, -1.0]]),
             "scales": np.full((3, 2), 0.8)}
gmm_data, gmm_truth = zoo.simulate("gaussian_mixture", seed=0, N=150, D=2, truth=GMM_TRUTH)
x_gmm = gmm_data["x"]
print("points per true component:", np.bincount(gmm_truth["assignment"], minlength=3))

gmm_cmp = zoo.compare("gaussian_mixture", backends=["em", "enum", "importance"], data=gmm_data,
                      truth=gmm_truth, seed=SEED)
gmm_cols = ["backend", "seconds", "draws", "ess_bulk_min", "r_hat_max", "loglik_per_point",
            "sklearn_loglik_per_point", "ari", "silhouette", "occupied"]
display(gmm_cmp.table[gmm_cols])

# %% [markdown]
# How to read it:
#
# * `loglik_per_point`: the mixture log-likelihood (eq 3.4) per point at the back-end's
#   posterior mean (for `em`, at its estimate); `sklearn_loglik_per_point` is the peer,
#   scikit-learn's `GaussianMixture` (also EM, diagonal covariances) on the same data.
# * `ari`: adjusted Rand index of each point's most frequent assignment against the true
#   component (1 = the same partition, 0 = chance); `silhouette` (000): how well separated
#   those clusters are in the data (−1 to 1); `occupied`: clusters actually used.
#
# EM reaches scikit-learn's maximum (both are EM on the same likelihood; 0.01 nats per
# point allows for a different stopping point). The Bayesian posterior means sit slightly
# *below* the maximum: the priors (Dirichlet(5) weights, Gamma(2, 2) scales) pull them away
# from the MLE by $O(1/N)$, and a posterior mean of draws is not the maximiser.

# %%
t_gmm = gmm_cmp.table.set_index("backend")
em_fit = gmm_cmp.results["em"]
trace = np.asarray(em_fit.diagnostics["loglik_trace"])
assert t_gmm.loc["em", "loglik_per_point"] >= t_gmm.loc["em", "sklearn_loglik_per_point"] - 0.01
assert np.all(np.diff(trace) >= -1e-8), "EM's log-likelihood never decreases"
print(f"EM: {len(trace) - 1} iterations, log-likelihood {trace[0]:.2f} -> {trace[-1]:.2f} (non-decreasing)")

# %% [markdown]
# **The responsibilities are exact.** Given the parameters, the posterior of each $z_i$ is
# a finite sum, eq 3.5:
# $q(z_i=k)=\pi_k\mathcal N(x_i\mid\mu_k,\sigma_k)\,/\sum_l\pi_l\mathcal N(x_i\mid\mu_l,\sigma_l)$.
# No approximation is involved: enumeration *is* the exact answer, and that is what `enum`
# and `importance` do inside their objective. We check `gaussian_mixture.responsibilities` at EM's
# estimate against the formula written out with scipy, and against scikit-learn's
# `predict_proba` (its components put in the same order).

# %%
w_em, locs_em, scales_em = (em_fit.draws(k)[0] for k in ("weights", "locs", "scales"))
resp = gm.responsibilities(x_gmm, w_em, locs_em, scales_em)
by_hand = np.stack([w_em[k] * stats.multivariate_normal(locs_em[k], np.diag(scales_em[k] ** 2)).pdf(x_gmm)
                    for k in range(3)], axis=1)
by_hand /= by_hand.sum(1, keepdims=True)
skl = GaussianMixture(3, covariance_type="diag", n_init=3, tol=1e-8, max_iter=1000, random_state=0).fit(x_gmm)
skl_resp = skl.predict_proba(x_gmm)[:, np.argsort(skl.means_[:, 0])]  # same order as the zoo's
print(f"max |resp - formula| = {np.abs(resp - by_hand).max():.1e}, "
      f"max |resp - sklearn| = {np.abs(resp - skl_resp).max():.1e}")
print("uncertain points (max responsibility < 0.99):", int((resp.max(1) < 0.99).sum()), "of", len(resp))
assert np.abs(resp - by_hand).max() < 1e-10

# %% [markdown]
# **Label switching.** The likelihood does not change when the components are permuted:
# $(\pi,\mu,\sigma)$ and $(\pi_{\rho},\mu_{\rho},\sigma_{\rho})$ fit equally well for any
# permutation $\rho$, so the posterior has $K!=6$ identical modes. A sampler that hops
# between them (or chains that settle in different ones) averages component 1 with
# component 2 and reports nonsense means. The zoo undoes this before anything is measured:
# the model's `relabel` sorts the components by their first loc coordinate in every draw
# and remaps the assignments with the same permutation (the table's `note` says so). Below:
# a permuted copy of the EM draws has the same likelihood and `relabel` puts it back.

# %%
perm = np.array([2, 0, 1])
post = {k: gmm_cmp.results["em"].idata.posterior[k].values for k in ("weights", "locs", "scales", "assignment")}
swapped = {k: post[k][:, :, perm] for k in ("weights", "locs", "scales")}
swapped["assignment"] = np.argsort(perm)[post["assignment"]]  # point in old k is now in new argsort(perm)[k]
ll_orig = gm.log_likelihood(x_gmm, w_em, locs_em, scales_em).sum()
ll_perm = gm.log_likelihood(x_gmm, swapped["weights"][0, 0], swapped["locs"][0, 0], swapped["scales"][0, 0]).sum()
back = gm.relabel(swapped)
print(f"log-likelihood: original {ll_orig:.6f}, permuted {ll_perm:.6f}; note: {gm.SPEC.scoring.relabel_note}")
assert abs(ll_orig - ll_perm) < 1e-9
assert all(np.array_equal(back[k], post[k]) for k in post)

# %%
enum_res = gmm_cmp.results["enum"]
modal = gm.modal_assignment(enum_res.idata.posterior["assignment"].values, 3)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
ax1.scatter(x_gmm[:, 0], x_gmm[:, 1], c=modal, cmap="viridis", s=14)
unsure = resp.max(1) < 0.99
ax1.scatter(x_gmm[unsure, 0], x_gmm[unsure, 1], facecolors="none", edgecolors="red", s=60,
            label="max responsibility < 0.99")
for b, marker in [("em", "X"), ("enum", "s"), ("importance", "o")]:
    m = gmm_cmp.results[b].draws("locs").mean(0)
    ax1.scatter(m[:, 0], m[:, 1], marker=marker, s=120, edgecolors="k", label=f"{b} locs")
ax1.scatter(*GMM_TRUTH["locs"].T, marker="+", s=200, color="red", label="true locs")
ax1.set_title("points coloured by enum's modal assignment")
ax1.set_xlabel("x[:, 0]")
ax1.set_ylabel("x[:, 1]")
ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
locs_imp = gmm_cmp.results["importance"].draws("locs")
for k in range(3):
    ax2.hist(locs_imp[:, k, 0], bins=30, alpha=0.6, density=True, label=f"component {k}")
    ax2.axvline(locs_em[k, 0], color="k", ls="--", label="EM estimate" if k == 0 else None)
ax2.set_title("importance draws of locs[k, 0] (relabelled)")
ax2.set_xlabel("locs[k, 0]")
ax2.set_ylabel("density")
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. PPCA: a closed-form maximum, EM, and a posterior that cannot pin down W
#
# In the latent-variable view of PCA (004 §3.3.1, eq 3.4), $z_i\sim\mathcal N(0,I_d)$ and
# $x_i\mid z_i\sim\mathcal N(Wz_i+\mu,\sigma^2 I_D)$, so $x_i\sim\mathcal N(\mu,WW^\top+\sigma^2I)$.
# Tipping and Bishop give the maximum of this likelihood in closed form: $\mu$ the sample
# mean, $\sigma^2_{ML}$ the mean of the $D-d$ smallest eigenvalues of the sample covariance,
# $W_{ML}=U_d(\Lambda_d-\sigma^2_{ML}I)^{1/2}R$ for **any** rotation $R$. The E and M steps
# of EM are also closed form (Gaussian–Gaussian conjugacy, as the notes say), cost $O(NDd)$
# per step and converge to the same maximum.
#
# The likelihood depends on $W$ only through $WW^\top$: $W$ and $WR$ are equally good, so
# the posterior of $W$ is a ridge along the rotations (held only by the rotation-invariant
# prior). A sampler's chains may sit at different rotations (or signs): r_hat on the entries
# of $W$ is then large, while r_hat on $WW^\top$, the identified quantity, is fine. The
# model's `diagnose` reports both (`r_hat_W_max`, `r_hat_WWt_max`).

# %%
# 60 points in D = 5, d = 2; the noise sd is fixed at 0.7 (a tiny sigma makes the z's
# conditional posteriors narrow and NUTS's steps tiny)
ppca_data, ppca_truth = zoo.simulate("ppca", seed=0, N=60, truth={"sigma": 0.7})
x_ppca = ppca_data["x"]
ml = ppca.ml_solution(x_ppca, 2)
ppca_nuts = {"num_samples": 500, "num_warmup": 500, "num_chains": 2, "jit": True}
ppca_cmp = zoo.compare("ppca", backends=["em", "nuts"], data=ppca_data, truth=ppca_truth, seed=SEED,
                       options={"em": {"num_samples": 200}, "nuts": ppca_nuts})
ppca_cols = ["backend", "seconds", "ess_bulk_min", "sigma_ml", "sigma_rel_error", "cov_rel_error",
             "loglik_gap_per_point", "r_hat_W_max", "r_hat_WWt_max"]
display(ppca_cmp.table[ppca_cols])
print("eigenvalues of the sample covariance:", np.round(ml["eigenvalues"], 3))

# %%
t_ppca = ppca_cmp.table.set_index("backend")
em_ppca = ppca_cmp.results["em"]
W_em = em_ppca.draws("W")[0]
# EM converges to the Tipping-Bishop maximum: same sigma, same W W^T (W itself differs by a rotation)
assert t_ppca.loc["em", "sigma_rel_error"] < 1e-3 and t_ppca.loc["em", "cov_rel_error"] < 1e-3
R = np.linalg.lstsq(ml["W"], W_em, rcond=None)[0]  # W_em = W_ml R
print("EM's W = W_ML R with R =\n", np.round(R, 3), "\nR^T R =\n", np.round(R.T @ R, 4))
assert np.allclose(R.T @ R, np.eye(2), atol=1e-2)  # R is orthogonal: a rotation (or reflection)

# %% [markdown]
# **NUTS and the rotation.** Two chains; r_hat over the entries of $W$ against r_hat over
# the entries of $WW^\top$. The posterior mean of $\sigma$ sits within about a posterior sd of
# $\sigma_{ML}$ (printed below): with 60 points in 5 dimensions the prior moves it little.

# %%
nuts_ppca = ppca_cmp.results["nuts"]
sig = nuts_ppca.draws("sigma")
print(f"sigma: ML {ml['sigma']:.4f}, NUTS mean {sig.mean():.4f} (sd {sig.std():.4f}), "
      f"true {float(ppca_truth['sigma']):.4f}")
print(f"r_hat: entries of W {t_ppca.loc['nuts', 'r_hat_W_max']:.3f}, "
      f"entries of W W^T {t_ppca.loc['nuts', 'r_hat_WWt_max']:.3f}")
# the lesson: r_hat on the identified W W^T is fine where r_hat on W's entries is not
assert t_ppca.loc["nuts", "r_hat_W_max"] > t_ppca.loc["nuts", "r_hat_WWt_max"]

# %%
W_draws = nuts_ppca.idata.posterior["W"].values  # (chain, draw, D, d)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for c in range(W_draws.shape[0]):
    ax1.plot(W_draws[c, :, 0, 0], W_draws[c, :, 0, 1], ".", ms=3, alpha=0.6, label=f"chain {c}")
r = np.hypot(*ml["W"][0])
th = np.linspace(0, 2 * np.pi, 200)
ax1.plot(r * np.cos(th), r * np.sin(th), "k--", lw=1, label="|W_ML[0, :]| (the rotation ridge)")
ax1.set_aspect("equal")
ax1.set_xlabel("W[0, 0]")
ax1.set_ylabel("W[0, 1]")
ax1.legend(fontsize=8)
ax1.set_title("NUTS draws of the first row of W")
WWt = (W_draws @ np.swapaxes(W_draws, -1, -2))[..., 0, 0]  # (chain, draw)
for c in range(W_draws.shape[0]):
    ax2.plot(WWt[c], lw=0.8, label=f"chain {c}")
ax2.axhline((ml["W"] @ ml["W"].T)[0, 0], color="k", ls="--", label="ML")
ax2.set_title("(W W^T)[0, 0]: identified, the chains agree")
ax2.set_xlabel("draw")
ax2.set_ylabel("(W W^T)[0, 0]")
ax2.legend(fontsize=8, ncol=3)
fig.tight_layout()
plt.show()

# %% [markdown]
# **Mixture PPCA** (eq 3.5): each point belongs to one of $K$ local linear subspaces,
# $x_i\mid t_i=k,z_i\sim\mathcal N(W_kz_i+\mu_k,\sigma_k^2I)$. EM (eqs 3.6, 3.7) integrates
# $z_i$ out, so the E step is a responsibility over components with covariances
# $W_kW_k^\top+\sigma_k^2I$ and the M step is the PPCA closed form on each component's
# weighted covariance. Scored by the ARI against the true components, and by the
# log-likelihood against scikit-learn's full-covariance mixture (a mixture PPCA is a
# constrained full-covariance mixture, so it cannot beat it, and with $d=D-1$ it would match).

# %%
mppca_data, mppca_truth = zoo.simulate("mixture_ppca", seed=0)
mppca = zoo.run("mixture_ppca", "em", data=mppca_data, truth=mppca_truth, seed=SEED, num_samples=200)
md = mppca.diagnostics
print(f"ARI {md['ari']:.3f}, occupied {md['occupied_clusters']}, log-lik per point {md['loglik_per_point']:.4f} "
      f"(sklearn full covariance {md['sklearn_loglik_per_point']:.4f})")
assert md["loglik_per_point"] <= md["sklearn_loglik_per_point"] + 0.01  # a constrained full covariance

# %% [markdown]
# ## 3. Dirichlet-process mixtures: how many clusters?
#
# A Dirichlet process $G\sim DP(\alpha,H)$ (004 §2.3.1) is a discrete random distribution
# used in 非参数贝叶斯 (non-parametric Bayesian) statistics. **Stick-breaking** (eq 2.1) builds
# its weights: break a fraction $V_1\sim\mathrm{Beta}(1,\alpha)$
# off a stick of length one, then a fraction $V_2$ of what is left, and so on,
#
# $$\pi_k=V_k\prod_{j<k}(1-V_j),\qquad \mathbb E[\pi_k]=\frac{1}{1+\alpha}\Big(\frac{\alpha}{1+\alpha}\Big)^{k-1},$$
#
# and attach to each weight an atom $\theta_k\sim H$ (eq 2.2). The 浓度参数 (concentration
# parameter) $\alpha$ sets how the stick is shared. Small $\alpha$: the first few
# sticks take almost everything; large $\alpha$: many small pieces. The zoo's `dp_mixture`
# truncates at $T$ components (the last weight takes the rest of the stick).

# %%
rng = np.random.default_rng(0)
ALPHAS = [0.1, 1.0, 5.0]
n_sticks, n_prior = 20, 4000
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), sharey=True)
rows = []
for ax, a in zip(axes, ALPHAS):
    w = dpm.stick_breaking(rng.beta(1.0, a, size=(n_prior, n_sticks - 1)))  # (n_prior, 20)
    expected = (1 / (1 + a)) * (a / (1 + a)) ** np.arange(n_sticks - 1)
    se = w[:, :-1].std(0) / np.sqrt(n_prior)
    rows.append({"alpha": a, "E[pi_1] formula": expected[0], "E[pi_1] simulated": w[:, 0].mean(),
                 "E[pi_2] formula": expected[1], "E[pi_2] simulated": w[:, 1].mean(),
                 "max |sim - formula| / se (k = 1, 2)": np.max(np.abs(w[:, :2].mean(0) - expected[:2]) / se[:2])})
    for i in range(3):
        ax.bar(np.arange(1, n_sticks + 1) + 0.25 * (i - 1), w[i], width=0.25, label=f"draw {i + 1}")
    ax.plot(np.arange(1, n_sticks), expected, "k.-", label="E[pi_k]")
    ax.set_title(f"alpha = {a}: three draws of the weights")
    ax.set_xlabel("k")
    ax.legend(fontsize=8)
axes[0].set_ylabel("weight pi_k")
fig.tight_layout()
plt.show()
display(pd.DataFrame(rows))

# %% [markdown]
# **The Pólya urn** (eq 2.10, the Chinese restaurant): integrating $G$ out, point $i$ opens
# a new cluster (新建聚类) with probability $\alpha/(\alpha+i-1)$ and otherwise joins cluster $h$ with
# probability $n_h/(\alpha+i-1)$. So the expected number of clusters among $n$ points is
# $\sum_{i=1}^{n}\alpha/(\alpha+i-1)\approx\alpha\log(1+n/\alpha)$: it grows with
# $\alpha$ and only logarithmically with $n$. Below: the formula (`expected_clusters`), the
# urn simulated (`polya_urn`), and clusters occupied by $n$ points under the *truncated*
# stick-breaking prior of the model (`zoo.simulate("dp_mixture")`, $T=10$): the truncation
# caps the count at 10, which matters for $\alpha=5$, where the urn wants about 17.

# %%
n_points = 150
n_urns = 500
urn_rows = []
for a in ALPHAS:
    urn = np.array([len(np.unique(dpm.polya_urn(a, n_points, rng))) for _ in range(n_urns)])
    truncated = np.array([len(np.unique(zoo.simulate("dp_mixture", seed=s, N=n_points, hyper={"alpha": a})[1]
                                        ["assignment"])) for s in range(n_urns // 3)])
    formula = dpm.expected_clusters(a, n_points)
    urn_rows.append({"alpha": a, "formula": formula, "Polya urn (simulated)": urn.mean(),
                     "urn se": urn.std() / np.sqrt(n_urns), "stick-breaking, T=10": truncated.mean()})
urn_table = pd.DataFrame(urn_rows)
display(urn_table)

# %% [markdown]
# **The posterior of the number of clusters.** The notes' Gibbs sampling (§2.3.4) alternates
# the assignments $S_i$ from their 多项式条件后验 (multinomial conditional posterior) (eq 2.12: an existing cluster in
# proportion to its size times the likelihood, a new one in proportion to $\alpha$) and the
# cluster parameters from their conjugate conditional (eq 2.13). The zoo's `gibbs` is the
# blocked version on the truncated sticks (an empty component plays the "new cluster").
# Each draw has a number of *occupied* clusters; its posterior is
# `Result.diagnostics["occupied_clusters"]`. We simulate 150 points from the model
# ($\alpha=1$, $T=10$) and run `gibbs` with $\alpha$ = 0.1, 1 and 5 on the **same** data.

# %%
dp_data, dp_truth = zoo.simulate("dp_mixture", seed=0)
x_dp = dp_data["x"]
sizes = np.bincount(dp_truth["assignment"])
print("true cluster sizes:", sizes[sizes > 0])
dp_opts = {"num_samples": 1000, "num_warmup": 500, "num_chains": 4}
dp_runs = {a: zoo.run("dp_mixture", "gibbs", data=dp_data, truth=dp_truth, hyper={"alpha": a}, seed=SEED,
                      **dp_opts) for a in ALPHAS}
dp_rows = []
for a, r in dp_runs.items():
    d = r.diagnostics
    dp_rows.append({"alpha": a, "prior E[clusters] (urn)": dpm.expected_clusters(a, len(x_dp)),
                    "posterior mean": d["occupied_clusters_mean"], "posterior mode": d["occupied_clusters_mode"],
                    "P(clusters = k)": {k: round(v, 3) for k, v in d["occupied_clusters"].items()},
                    "true clusters": d["true_clusters"], "ari": d["ari"], "silhouette": d["silhouette"],
                    "sklearn_clusters": d["sklearn_clusters"], "sklearn_ari": d["sklearn_ari"]})
dp_table = pd.DataFrame(dp_rows)
with pd.option_context("display.max_colwidth", 60):
    display(dp_table)

# %% [markdown]
# The prior expectation moves from about 1.5 to about 17 clusters as $\alpha$ goes from 0.1
# to 5; the posterior barely moves: with 150 points the data decide. (The notes: "α 的大小直接
# 影响聚类的数量", the size of α directly affects the number of clusters; a priori, that is.) What $\alpha$ still
# changes is the willingness to open small extra clusters: the posterior mean grows a little
# with $\alpha$. The true partition has a few clusters of one or two points (the sizes
# above), which the Gibbs sampler keeps as separate clusters (ARI about 1 against the truth)
# and which scikit-learn's variational `BayesianGaussianMixture` (the peer, same $T$ and
# $\alpha$, spherical covariances) absorbs into the big ones (`sklearn_clusters`).
#
# NUTS on this model is left out of `zoo.compare("dp_mixture")` unless named:

# %%
print("skipped by default:", zoo.get_model("dp_mixture").backends.skip_by_default)
post_means = dp_table["posterior mean"]
prior_means = dp_table["prior E[clusters] (urn)"]
# the data dominate: the posterior means spread over less than a tenth of the prior's range
assert post_means.max() - post_means.min() < 0.1 * (prior_means.max() - prior_means.min())

# %%
r1 = dp_runs[1.0]
point = dpm.point_clustering(r1.idata.posterior["assignment"].values.reshape(-1, len(x_dp)))
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
ax1.scatter(x_dp[:, 0], x_dp[:, 1], c=point, cmap="tab10", s=14)
ax1.set_title("DP mixture, alpha = 1: Gibbs point clustering")
ax1.set_xlabel("x[:, 0]")
ax1.set_ylabel("x[:, 1]")
width = 0.25
for i, (a, r) in enumerate(dp_runs.items()):
    pk = r.diagnostics["occupied_clusters"]
    ax2.bar(np.array(list(pk)) + width * (i - 1), list(pk.values()), width=width, label=f"alpha = {a}")
ax2.axvline(dp_table["true clusters"].iloc[0], color="k", ls="--", label="true")
ax2.set_xlabel("occupied clusters")
ax2.set_ylabel("posterior probability")
ax2.set_title("posterior of the number of occupied clusters")
ax2.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The state-space model: Kalman smoother against sampling and mean field
#
# The notes' SSM (004 §1.4, eq 1.2) is the continuous system $x'(t)=Ax(t)+Bu(t)$,
# $y(t)=Cx(t)+Du(t)$. Discretised in time and with Gaussian noise it becomes
#
# $$x_t=Ax_{t-1}+Bu_t+\varepsilon_t,\ \varepsilon_t\sim\mathcal N(0,Q),\qquad
#   y_t=Cx_t+Du_t+\eta_t,\ \eta_t\sim\mathcal N(0,R),$$
#
# a linear-Gaussian latent variable model whose latent is the whole path $x_{1:T}$. Its
# posterior is Gaussian and exact: the Kalman filter runs forward (and gives the exact log
# evidence), the Rauch–Tung–Striebel smoother runs backward for the marginals. The default
# model is a damped rotation in two dimensions, observed with noise, $T=50$: 100 latent
# scalars. We compare the exact answer with NUTS and with mean-field SVI (`svi`, a diagonal
# Gaussian guide).

# %%
ssm_data, ssm_truth = zoo.simulate("linear_gaussian_ssm", seed=0)
ssm_nuts = {"num_samples": 300, "num_warmup": 300, "num_chains": 4}
ssm_cmp = zoo.compare("linear_gaussian_ssm", backends=["exact", "nuts", "svi"], data=ssm_data, truth=ssm_truth,
                      seed=SEED, options={"nuts": ssm_nuts})
ssm_cols = ["backend", "seconds", "ess_bulk_min", "r_hat_max", "max_abs_z", "sd_ratio_min", "sd_ratio_max",
            "w1_max", "elbo", "elbo_gap", "log_evidence", "rmse_truth", "coverage_90", "correct"]
display(ssm_cmp.table[ssm_cols])

# %% [markdown]
# **What mean field gets wrong.** The posterior of the path is strongly correlated in time
# ($x_t$ and $x_{t+1}$ are tied by the dynamics). For a Gaussian posterior $\mathcal N(m,\Sigma)$
# with precision $\Lambda=\Sigma^{-1}$, the best factorised Gaussian (minimum
# $\mathrm{KL}(q\Vert p)$, 004 §2.2.3) has the exact means and the *conditional* variances
# $1/\Lambda_{jj}$ instead of the marginal $\Sigma_{jj}$: too narrow. We build $\Lambda$ of the
# path directly (prior precision from the transition densities plus $C^\top R^{-1}C$ on the
# diagonal blocks), invert it, check the RTS smoother's variances against it, and predict
# each sd ratio $1/\sqrt{\Lambda_{jj}\Sigma_{jj}}$ of mean-field SVI.

# %%
h = {k: np.atleast_1d(np.asarray(v.default, dtype=float)) for k, v in zoo.get_model("linear_gaussian_ssm").hyper.items()}
A, C, Q, Rn, P0 = h["A"], h["C"], h["Q"], h["R"], h["P0"]
T_len, dx = ssm_truth["x"].shape
M = np.eye(T_len * dx)  # residuals e = M x: e_1 = x_1, e_t = x_t - A x_{t-1}
for t in range(1, T_len):
    M[t * dx:(t + 1) * dx, (t - 1) * dx:t * dx] = -A
noise_prec = np.zeros((T_len * dx, T_len * dx))
noise_prec[:dx, :dx] = np.linalg.inv(A @ P0 @ A.T + Q)
for t in range(1, T_len):
    noise_prec[t * dx:(t + 1) * dx, t * dx:(t + 1) * dx] = np.linalg.inv(Q)
Lam = M.T @ noise_prec @ M + np.kron(np.eye(T_len), C.T @ np.linalg.inv(Rn) @ C)
Sigma = np.linalg.inv(Lam)
smoothed_var = np.diagonal(ssm_cmp.exact.extra["smoothed_covs"], axis1=1, axis2=2).reshape(-1)
assert np.allclose(np.diag(Sigma), smoothed_var, rtol=1e-8)  # the RTS smoother is exact
mf_ratio = 1 / np.sqrt(np.diag(Lam) * np.diag(Sigma))  # (T * dx,), time-major like x.reshape(-1)

svi_draws = ssm_cmp.results["svi"].draws("x").reshape(-1, T_len * dx)
svi_ratio = svi_draws.std(0) / np.sqrt(np.diag(Sigma))
print(f"mean-field sd ratio, closed form: {mf_ratio.min():.3f} to {mf_ratio.max():.3f}; "
      f"SVI measured: {svi_ratio.min():.3f} to {svi_ratio.max():.3f}")
print(f"posterior correlation of x_t and x_t+1 (first coordinate, t = 25): "
      f"{Sigma[50, 52] / np.sqrt(Sigma[50, 50] * Sigma[52, 52]):.3f}")

t_ssm = ssm_cmp.table.set_index("backend")
print(f"SVI - closed form: mean {np.mean(svi_ratio - mf_ratio):+.4f}, sd {np.std(svi_ratio - mf_ratio):.4f}, "
      f"max |.| {np.abs(svi_ratio - mf_ratio).max():.4f}")
# NUTS passes the yardstick on all 100 scalars; mean field has the right means but too narrow sds
assert t_ssm.loc["nuts", "max_abs_z"] < 0.25
assert t_ssm.loc["svi", "max_abs_z"] < 0.25 and t_ssm.loc["svi", "sd_ratio_max"] < 0.9

# %%
mean_exact = ssm_cmp.exact.mean["x"]
sd_exact = ssm_cmp.exact.sd["x"]
ts = np.arange(1, T_len + 1)
fig, axes = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
for j, ax in enumerate(axes):
    ax.fill_between(ts, mean_exact[:, j] - 2 * sd_exact[:, j], mean_exact[:, j] + 2 * sd_exact[:, j],
                    color="tab:blue", alpha=0.25, label="Kalman/RTS ±2 sd")
    ax.plot(ts, mean_exact[:, j], color="tab:blue", label="smoothed mean")
    svi_x = ssm_cmp.results["svi"].draws("x")[:, :, j]
    ax.plot(ts, svi_x.mean(0) - 2 * svi_x.std(0), color="tab:orange", ls="--", lw=1, label="mean-field SVI ±2 sd")
    ax.plot(ts, svi_x.mean(0) + 2 * svi_x.std(0), color="tab:orange", ls="--", lw=1)
    nuts_x = ssm_cmp.results["nuts"].draws("x")[:, :, j]
    ax.plot(ts, nuts_x.mean(0), color="tab:green", ls=":", label="NUTS mean")
    ax.plot(ts, ssm_truth["x"][:, j], "k.", ms=5, label="true x")
    ax.plot(ts, ssm_data["y"][:, j], "x", color="gray", ms=4, label="observed y")
    ax.set_ylabel(f"x[:, {j}]")
fig.suptitle("State-space model: the smoothed path (Kalman/RTS) against NUTS (on top of it) and mean-field SVI")
fig.legend(*axes[0].get_legend_handles_labels(), ncol=6, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.95))
axes[1].set_xlabel("t")
fig.tight_layout(rect=(0, 0, 1, 0.9))
plt.show()

# %%
elapsed = time.perf_counter() - START
print(f"notebook ran in {elapsed:.0f} s")

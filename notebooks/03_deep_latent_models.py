# ---
# jupyter:
#   execution:
#     timeout: 240
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
# # 03 Deep latent-variable models: bounds, gradients, flows and normalisers
#
# Companion to the notes 004 §3.3 and 000 (VAE: 编码器 (encoder), 解码器 (decoder), the
# 重参数化 (reparameterisation) trick), §3.4 (discrete latent variables: the REINFORCE
# estimator, the Gumbel-softmax trick, control variates), §3.6 (normalizing flows) and the
# papers chapter (Variational RNN, eqs 6.2–6.10; noise-contrastive estimation, §4.1). None of
# these models has an exact posterior, so the yardsticks here are exact *identities*
# (Jensen's inequality, a Jacobian computed by autograd, a gradient computed by enumeration, a
# normaliser known in closed form) and Monte Carlo standard errors.
#
# The notebook also shows where things go wrong: a VRNN whose latent path collapses onto its
# prior, score-function gradients with a variance a thousand times their mean, a flow that
# gives one held-out point an absurd density, and a likelihood that cannot learn a normaliser.
#
# The notebook runs at the settings a reader gets; its last cell prints how long it took.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

import logging
import os
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from IPython.display import Image, display
from scipy import stats

import zoo
from zoo.cli import print_comparison
from zoo.models import discrete_latent as dl
from zoo.models import nce_unnormalized as nce
from zoo.models import realnvp_flow as rf
from zoo.models import vae, vrnn

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)
pd.set_option("display.width", 200)
pd.set_option("display.precision", 4)
# the models are small: one torch thread is faster than two fighting over 2 cores
torch.set_num_threads(1)
logging.getLogger("pyro").setLevel(logging.WARNING)  # no "Guessed max_plate_nesting" notes

SEED = 0                # the same seed gives the same numbers
VAE_STEPS = 2000        # SVI steps for the VAE on 500 digits
VRNN_STEPS = 200        # the posterior collapse below is at this budget
DISCRETE_STEPS = 300    # the ELBO gaps below are at this budget
GRAD_DRAWS = 2000       # one-draw gradient estimates per estimator
FLOW_STEPS = 800        # maximum-likelihood steps for RealNVP
FUNNEL_STEPS = 600      # SVI steps for the guides on the funnel
NCE_REPEATS = 400       # simulated data sets for NCE's sampling spread
START = time.perf_counter()
PLOTS = tempfile.mkdtemp()

# %% [markdown]
# ## 1. The variational autoencoder (004 §3.3.2–3.3.6)
#
# A latent $z_i\in\mathbb R^d$ per data point and a decoder network $\theta$ (eq 3.8, here with
# a continuous-Bernoulli likelihood for grey pixels in $[0,1]$, the proper density behind
# eq 3.28's cross-entropy):
#
# $$p(X,Z\mid\theta)=\prod_i p(x_i\mid z_i,\theta)\,\mathcal N(z_i\mid 0,I).$$
#
# The posterior $p(z_i\mid x_i,\theta)$ has no closed form (eq 3.9), so an *encoder* network
# $\varphi$ outputs a Gaussian $q(z_i\mid x_i,\varphi)=\mathcal N(\mu_\varphi(x_i),
# \mathrm{diag}\,\sigma^2_\varphi(x_i))$ (eq 3.11) and both networks maximise the ELBO
# (eqs 3.14, 3.24)
#
# $$\mathcal L(\varphi,\theta)=\mathbb E_{q}\log p(X\mid Z,\theta)-\mathrm{KL}(q(Z\mid X,\varphi)\,\|\,p(Z)),$$
#
# with reparameterised draws $z=\mu+\sigma\odot\varepsilon$ (eq 3.23) and the KL in closed
# form (eq 3.33), $\mathrm{KL}=\tfrac12\sum_j(\mu_j^2+\sigma_j^2-1-\log\sigma_j^2)$.
# (The notes' eq 3.29 drops the minus sign in front of $\tfrac12\sum_j[1+\log\sigma_j^2-
# \mu_j^2-\sigma_j^2]$; their code, `KLD = -0.5 * torch.sum(...)`, has it.)
#
# Three numbers per data point come out of `Result.diagnostics`:
#
# * `elbo`: $\frac1K\sum_k\log w_k$ with $w_k=p(x,z_k)/q(z_k\mid x)$, $z_k\sim q$;
# * `iwae`: the importance-weighted bound $\log\frac1K\sum_k w_k$ (Burda et al. 2016), with
#   the *same* $K$ draws. Jensen's inequality makes it $\ge$ the ELBO for every draw set,
#   and it rises towards $\log p(x)$ as $K$ grows;
# * `amortisation_gap`: $\mathrm{ELBO}(q_i^\star)-\mathrm{ELBO}(q_\varphi)$, where $q_i^\star$
#   is a Gaussian fitted to one point alone (the notes' mean field, eq 3.10) starting from
#   the encoder's answer: what one shared network costs against a free $q$ per point.
#   It is measured on 16 held-out digits.

# %%
vres = zoo.run("vae", "svi", seed=SEED, num_steps=VAE_STEPS, lr=0.01, num_samples=50, num_chains=2,
               progress=False)
vd = vres.diagnostics
x_digits = vres.idata.observed_data["x"].values
n_digits, n_pixels = x_digits.shape
vae_table = pd.Series({k: vd[k] for k in ("elbo", "iwae", "iwae_k", "kl", "reconstruction",
                                          "amortisation_gap", "approximation_gap")})
print(f"{n_digits} digits of {n_pixels} pixels, {VAE_STEPS} SVI steps in {vres.seconds:.1f} s "
      f"(amortisation gap on {vd['amortisation_batch']})")
display(vae_table.to_frame("per data point (nats)"))

# ELBO <= IWAE: both come from the same K draws per point, and mean(log w) <= log mean(w)
assert vd["elbo"] <= vd["iwae"]

# %% [markdown]
# The training curve (the ELBO per data point at each step; one reparameterised draw per step,
# hence the noise) and the KL term, recomputed in numpy from the encoder's weights with eq 3.33,
# dimension by dimension. A latent dimension whose KL is near 0 carries no information about
# $x$: $q(z_j\mid x)=p(z_j)$ for every $x$, the dimension has *collapsed*. The activity
# statistic $A_j=\mathrm{Var}_x(\mathbb E_q[z_j\mid x])$ (Burda et al.) says the same:
# a dimension counts as active when $A_j>0.01$. With $d=2$ on the digits both dimensions are
# used (contrast the VRNN below).

# %%
nets = vd["networks"]
d_latent, hidden = int(vres.hyper["d"]), int(vres.hyper["hidden"])
encoder = vae.load_state(vae.Encoder(n_pixels, d_latent, hidden).double(), nets["encoder"])
decoder = vae.load_state(vae.Decoder(d_latent, hidden, n_pixels).double(), nets["decoder"])
with torch.no_grad():
    loc, scale = (t.numpy() for t in encoder(torch.as_tensor(x_digits)))
kl_per_dim = (0.5 * (loc**2 + scale**2 - 1 - 2 * np.log(scale))).mean(0)
activity = loc.var(0)
display(pd.DataFrame({"KL per point (nats)": kl_per_dim, "activity A_j": activity,
                      "active": activity > 0.01}, index=[f"z[{j}]" for j in range(d_latent)]))
assert abs(kl_per_dim.sum() - vd["kl"]) < 1e-9  # eq 3.33 in numpy is the KL the zoo reports

fig, ax = plt.subplots(figsize=(7, 3))
trace = np.asarray(vd["elbo_trace"]) / n_digits
ax.plot(trace)
ax.set_ylim(np.percentile(trace, 5) - 5, trace.max() + 5)
ax.set_xlabel("SVI step")
ax.set_ylabel("ELBO per digit (nats)")
ax.set_title("VAE training curve")
fig.tight_layout()
plt.show()

# %% [markdown]
# **The amortisation gap, with its Monte Carlo error.** We redo the zoo's computation point by
# point: fit $q_i^\star$ to each held-out digit, then evaluate both ELBOs with the same
# 256 standard-normal draws (common random numbers). The per-point gap can only be negative by
# Monte Carlo error or by the per-point optimiser failing to improve on its starting point.
# The digits are held out, so the gap also holds the encoder's generalisation error, and it is
# very uneven across digits (the range printed below).

# %%
kind = vres.hyper["likelihood"]
batch = torch.as_tensor(vae.digits()[0][-vae.GAP_BATCH:], dtype=torch.float64)
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    b_loc, b_scale = encoder(batch)
m_star, s_star = vae.fit_per_point(batch, b_loc, b_scale, decoder, kind, generator=g)
state = g.get_state()
with torch.no_grad():
    lw_amortised = vae.log_weights(batch, b_loc, b_scale, decoder, kind, 256, g)
    g.set_state(state)
    lw_free = vae.log_weights(batch, m_star, s_star, decoder, kind, 256, g)
gap_i = (lw_free - lw_amortised).mean(0).numpy()               # per held-out digit
se_gap = np.sqrt((lw_free - lw_amortised).var(0).sum().item() / 256) / len(gap_i)
print(f"amortisation gap {gap_i.mean():.3f} nats per point (Monte Carlo se {se_gap:.3f}); "
      f"per point from {gap_i.min():.2f} to {gap_i.max():.2f}")
assert abs(gap_i.mean() - vd["amortisation_gap"]) < 1e-8  # the zoo's own number, to rounding

# %% [markdown]
# Reconstructions (top: data, bottom: decoder mean at the posterior mean of $z$) and the 2-D
# latent space: the encoder means of the 500 digits coloured by their label (the labels were
# never shown to the model), and the decoder's mean image over a grid of $z$. The prior is
# isotropic, so the latent space is identified only up to a rotation or reflection.

# %%
for png in vae.plot(vres, os.path.join(PLOTS, "vae")):
    display(Image(filename=str(png)))

# %% [markdown]
# ## 2. The variational RNN (papers §2.1, eqs 6.2–6.10)
#
# A VAE at every time step whose prior, decoder and encoder read an RNN state $h_{t-1}$:
#
# $$z_t\sim\mathcal N(\mu_{0,t},\mathrm{diag}\,\sigma_{0,t}^2),\ (\mu_{0,t},\sigma_{0,t})
# =\varphi^{\text{prior}}(h_{t-1})\quad(6.2, 6.3)$$
#
# $$x_t\mid z_t\sim\mathcal N(\mu_{x,t},\mathrm{diag}\,\sigma_{x,t}^2),\ (\mu_{x,t},\sigma_{x,t})
# =\varphi^{\text{dec}}(\varphi^z(z_t),h_{t-1})\quad(6.4, 6.5)$$
#
# $$h_t=f_\theta(\varphi^x(x_t),\varphi^z(z_t),h_{t-1})\quad(6.6)$$
#
# and the encoder $q(z_t\mid x_{\le t},z_{<t})=\mathcal N(\varphi^{\text{enc}}(\varphi^x(x_t),
# h_{t-1}))$ (eqs 6.7–6.9). The objective (eq 6.10) is a sum over steps,
#
# $$\mathbb E_q\Big[\sum_t -\mathrm{KL}(q(z_t\mid\cdot)\,\|\,p(z_t\mid\cdot))+\log p(x_t\mid z_{\le t},x_{<t})\Big],$$
#
# so the zoo reports it per step (`elbo_per_step`) with its KL part (`kl_per_step`).
# The data are 32 synthetic sequences of length 15 in $\mathbb R^2$ drawn from a VRNN with
# fixed random weights (`zoo.simulate("vrnn")`).

# %%
seq_data, seq_truth = zoo.simulate("vrnn", seed=0)
rres = zoo.run("vrnn", "svi", data=seq_data, seed=SEED, num_steps=VRNN_STEPS, lr=0.01, num_samples=50,
               num_chains=2, progress=False)
rd = rres.diagnostics
per_step = pd.DataFrame({"ELBO": rd["elbo_per_step"], "KL(q || p)": rd["kl_per_step"],
                         "log p(x_t | ...)": rd["loglik_per_step"]},
                        index=pd.RangeIndex(1, len(rd["elbo_per_step"]) + 1, name="t"))
print(f"data {seq_data['x'].shape}; {VRNN_STEPS} steps in {rres.seconds:.1f} s; ELBO {rd['elbo']:.3f}, "
      f"IWAE ({rd['iwae_k']} draws) {rd['iwae']:.3f} per sequence")
display(per_step.T)

assert rd["elbo"] <= rd["iwae"]  # the same draws: Jensen

# %% [markdown]
# **Posterior collapse.** Look at the KL column: it is essentially zero at every step. The
# encoder has learned $q(z_t\mid x_{\le t},z_{<t})=p(z_t\mid x_{<t},z_{<t})$, i.e. $z$ tells
# the decoder nothing about $x$. That is a legitimate optimum of eq 6.10: the decoder already
# sees $h_{t-1}$, which summarises $x_{<t}$, and these smooth sequences are predictable from
# their past; any information put into $z_t$ costs KL and buys little likelihood. So the
# ELBO is spent entirely on $\log p(x_t\mid\ldots)$, the latent path is unused, and
# "reconstructions" at the posterior mean of $z$ are one-step-ahead predictions. The usual
# remedies (KL annealing, free bits, a weaker decoder) are not in the zoo; this is what plain
# SVI gives at this budget.

# %%
print(f"largest KL per step: {per_step['KL(q || p)'].max():.4f} nats; "
      f"share of the ELBO's magnitude spent on KL: {per_step['KL(q || p)'].sum() / abs(rd['elbo']):.2%}")
assert per_step["KL(q || p)"].max() < 0.05  # collapsed: below 0.05 nats at every step

# %%
for png in vrnn.plot(rres, os.path.join(PLOTS, "vrnn")):
    display(Image(filename=str(png)))

# %% [markdown]
# ## 3. Discrete latents: five gradient estimators (004 §3.4, 002 §8)
#
# `discrete_latent` is a 1-D mixture of $K=3$ unit-variance clusters with a categorical
# $c_n$ per point. The encoder $q(c_n\mid x_n)=\mathrm{softmax}(a\,x_n+b)$ has to be trained
# through a discrete draw, where the reparameterisation trick does not apply. The estimators of
# $\nabla_{a,b}\,\mathbb E_q f$, with $f_n=\log p(x_n,c_n\mid\text{locs})-\log q(c_n\mid x_n)$:
#
# * `reinforce` (eq 3.3): $f(c)\,\nabla\log q(c)$, $c\sim q$; unbiased because the score has
#   mean zero (eq 3.19), but its variance is the problem;
# * `reinforce_baseline` (eqs 3.18–3.22): $(f(c)-b)\,\nabla\log q(c)$ with $b$ a running
#   average of $f$ per point: still unbiased, less variance;
# * `nvil` (eq 3.23): the baseline $b(x)$ is a small network fitted by squared error;
# * `gumbel_softmax` (eqs 3.10–3.14): replace $c$ by $\mathrm{softmax}((\log\pi+\gamma)/\tau)$,
#   $\gamma\sim\mathrm{Gumbel}(0,1)$, and differentiate through it: *biased* (the likelihood
#   is evaluated at a relaxed, not a one-hot, $c$), with a bias that shrinks and a variance
#   that grows as $\tau\to0$;
# * `enumeration`: the exact gradient, a sum over the $K$ values of $c$ (the yardstick).
#
# First, all of them at one parameter point (`dl.gradient_variance`): independent one-draw
# estimates, their variance (trace of the covariance), their bias against the exact gradient,
# and `bias_max_z` = the largest |mean − exact| / standard error over the $2K$ coordinates
# (an unbiased estimator gives $|z|\lesssim3$).

# %%
ddata, dtruth = zoo.simulate("discrete_latent", seed=0)
t0 = time.perf_counter()
gv = dl.gradient_variance(ddata, K=3, sigma=1.0, num_draws=GRAD_DRAWS, seed=SEED)
gv["label"] = gv["estimator"] + gv["temperature"].map(lambda t: "" if np.isnan(t) else f" (tau={t:g})")
gv = gv.set_index("label")
print(f"{GRAD_DRAWS} draws per estimator in {time.perf_counter() - t0:.1f} s; "
      f"norm of the exact gradient {gv['exact_grad_norm'].iloc[0]:.3f}")
display(gv.drop(columns=["estimator", "exact_grad_norm"]))

v = gv["variance"]
# a baseline (a control variate, §3.4.3) cuts the variance and keeps the estimator unbiased
assert v["reinforce_baseline"] < v["reinforce"]

# %% [markdown]
# Note the Gumbel-softmax row at $\tau=0.1$ (below the notes' rule of thumb
# $\tau\le1/(K-1)=0.5$): nearly unbiased, but with a larger variance than plain REINFORCE here.
# The relaxation is no free lunch.
#
# **Training with each estimator.** Each back-end fits $q(\text{locs})\,q(c\mid x)$ by Adam for
# the same number of steps, one draw per step; the ELBO recorded is computed with $c$ summed out
# exactly, so it is comparable across estimators. `grad_variance` is each estimator's gradient
# variance at its own fitted point; `ari` is the adjusted Rand index of the assignments against
# the simulated truth.

# %%
ESTIMATORS = ["reinforce", "reinforce_baseline", "nvil", "gumbel_softmax", "enumeration"]
dcmp = zoo.compare("discrete_latent", backends=ESTIMATORS, data=ddata, truth=dtruth, seed=SEED,
                   num_steps=DISCRETE_STEPS, num_samples=100, num_chains=2)
dtab = dcmp.table.set_index("backend")[["seconds", "elbo", "loglik_per_point", "ari"]].copy()
for est in ESTIMATORS:
    d = dcmp.results[est].diagnostics
    dtab.loc[est, "ms_per_step"] = 1000 * d["seconds_per_step"]
    dtab.loc[est, "grad_variance"] = d["grad_variance"]
dtab["elbo_gap_to_enumeration"] = dtab.loc["enumeration", "elbo"] - dtab["elbo"]
display(dtab)

# after the same number of steps plain REINFORCE is behind the exact gradient
assert dtab.loc["reinforce", "elbo_gap_to_enumeration"] > 0

# %% [markdown]
# ELBO against wall time. Each step of every estimator costs about the same (one draw), so
# wall time is a fair clock here; NVIL pays for its baseline network.

# %%
fig, ax = plt.subplots(figsize=(8, 3.5))
for est in ESTIMATORS:
    d = dcmp.results[est].diagnostics
    ax.plot(d["time_trace"], pd.Series(d["elbo_trace"]).rolling(10, min_periods=1).mean(), label=est)
ax.set_xlabel("wall seconds")
ax.set_ylabel("ELBO (c summed out; rolling mean of 10)")
ax.set_ylim(dtab["elbo"].min() - 40, dtab["elbo"].max() + 10)
ax.set_title("discrete latents: ELBO against wall time, one estimator per line")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Normalizing flows (004 §3.6)
#
# A bijection $z=f_\theta(x)$ gives the density by the change of variables (eq 3.3)
# $p(x)=p(f_\theta(x))\,\lvert\det\partial f_\theta/\partial x\rvert$. An affine coupling
# layer (eq 3.4) keeps $x_{1:d}$ and maps $y_{d+1:D}=x_{d+1:D}\odot\exp(s(x_{1:d}))+t(x_{1:d})$:
# its inverse is explicit (eq 3.5), its Jacobian is triangular (eq 3.6), so
# $\log\lvert\det\rvert=\sum_j s_j(x_{1:d})$ (eq 3.7) and a stack of layers with the halves
# swapped (eq 3.8) has $\log p(x)=\log p(f(x))+\sum_i\log\lvert\det\partial f^i/\partial f^{i-1}\rvert$
# (eq 3.9). `realnvp_flow` stacks 4 of Pyro's `AffineCoupling` layers and fits them by maximum
# likelihood on scikit-learn's two moons (500 points, standardised); the `mle` back-end holds
# out a quarter of the points and compares with a Gaussian fitted to the same training points.

# %%
fres = zoo.run("realnvp_flow", "mle", seed=SEED, num_steps=FLOW_STEPS)
fd = fres.diagnostics
# the same split and fit by hand, to get hold of the fitted flow
moons = rf.two_moons()
order = np.random.default_rng(SEED).permutation(len(moons))
n_test = round(0.25 * len(moons))
test, train = moons[order[:n_test]], moons[order[n_test:]]
flow_fit = rf.fit_flow(train, 4, 16, FLOW_STEPS, 5e-3, SEED)
assert np.allclose(flow_fit.loglik_trace, fd["loglik_trace"], rtol=0, atol=1e-8)  # the back-end's own fit

gauss = stats.multivariate_normal(train.mean(0), np.cov(train.T, bias=True))
lp_flow, lp_gauss = flow_fit.log_prob(test), gauss.logpdf(test)
flow_tab = pd.DataFrame({
    "train mean": [fd["loglik_per_point"], gauss.logpdf(train).mean()],
    "held-out mean": [fd["test_loglik_per_point"], fd["gaussian_test_loglik_per_point"]],
    "held-out median": [np.median(lp_flow), np.median(lp_gauss)],
    "held-out worst point": [lp_flow.min(), lp_gauss.min()]}, index=["RealNVP", "Gaussian"])
print(f"log-likelihood per point after {FLOW_STEPS} steps ({fres.seconds:.1f} s)")
display(flow_tab)

assert np.median(lp_flow) > np.median(lp_gauss)  # on the typical held-out point the flow wins

# %% [markdown]
# **Where it goes wrong.** The flow wins on the typical held-out point but its *mean* held-out
# log-likelihood can be far below the Gaussian's: a few held-out points fall where the flow
# has put almost no mass (between the moons), and there its log density is enormous and
# negative. Pyro's coupling layer lets $s$ range over $[-5,3]$, so four layers can stretch a
# region by up to $e^{20}$; a point in such a region is sent deep into the base
# distribution's tail. The mean of held-out log densities is then dominated by one point: look
# at the median and the worst point as well (red cross in the plot), and treat a flow's
# held-out mean log-likelihood with care.

# %%
print("held-out points where the flow is worse than the Gaussian by more than 5 nats:",
      int(np.sum(lp_flow < lp_gauss - 5)), "of", len(test))
lo, hi = moons.min(0) - 0.7, moons.max(0) + 0.7
g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 160), np.linspace(lo[1], hi[1], 160))
dens = np.exp(flow_fit.log_prob(np.stack([g0.ravel(), g1.ravel()], 1))).reshape(g0.shape)
worst = test[np.argmin(lp_flow)]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
cs = ax1.contourf(g0, g1, dens, levels=30, cmap="viridis")
ax1.scatter(*train.T, s=2, c="white", alpha=0.5, label="training points")
ax1.scatter(*test.T, s=6, c="orange", label="held-out points")
ax1.scatter(*worst, marker="x", s=120, c="red", label=f"worst held-out point ({lp_flow.min():.3g})")
ax1.legend(loc="lower left", fontsize=7)
fig.colorbar(cs, ax=ax1, label="density")
ax1.set_title("RealNVP density on two moons")
ax1.set_xlabel("x[:, 0] (standardised)")
ax1.set_ylabel("x[:, 1] (standardised)")
ax2.plot(fd["loglik_trace"])
ax2.set_xlabel("Adam step")
ax2.set_ylabel("training log-likelihood per point")
ax2.set_title("maximum-likelihood training")
fig.tight_layout()
plt.show()

# %% [markdown]
# **The log-determinant, checked against autograd.** For 8 base points $z$ we compare the zoo's
# layer-by-layer sum (eq 3.9, `rf.log_det_by_layers`) and Pyro's composed
# `log_abs_det_jacobian` with $\log\lvert\det J\rvert$ of the full $2\times2$ Jacobian of
# $x=T(z)$ computed by automatic differentiation, on the *fitted* flow. Then the density
# integrates to 1 on a grid (it is a density, whatever its tails look like).

# %%
flow = flow_fit.flow
z = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(SEED))
by_layers = rf.log_det_by_layers(flow, z.clone()).detach().numpy()
xz = flow(z.clone())
composed = flow.log_abs_det_jacobian(z.clone(), xz).detach().numpy()
jac = torch.stack([torch.autograd.functional.jacobian(flow, zi.clone()) for zi in z])
reference = torch.linalg.slogdet(jac)[1].numpy()
display(pd.DataFrame({"sum over layers (eq 3.9)": by_layers, "Pyro composed": composed,
                      "autograd log|det J|": reference}))
assert np.allclose(by_layers, reference, rtol=0, atol=1e-8)
grid = np.linspace(-12, 12, 481)
gg0, gg1 = np.meshgrid(grid, grid)
mass = np.exp(flow_fit.log_prob(np.stack([gg0.ravel(), gg1.ravel()], 1))).sum() * (grid[1] - grid[0]) ** 2
print(f"integral of the fitted density over [-12, 12]^2: {mass:.4f}")

# %% [markdown]
# **The same coupling layers as a guide family.** `rf.coupling_guide` pushes a standard normal
# through coupling layers over the model's latents (`AutoNormalizingFlow`). On Neal's funnel,
# $v\sim\mathcal N(0,3^2)$, $u\mid v\sim\mathcal N(0,e^{v})$, the posterior (here: the prior,
# nothing is observed) is known exactly: $v$'s marginal has sd 3 and $\log Z=0$, so the ELBO
# is $-\mathrm{KL}(q\,\|\,p)$. A mean-field Gaussian cannot bend into the funnel's neck; reverse
# KL makes it hide in the wide part and shrink $v$'s spread.

# %%
def funnel():
    v = pyro.sample("v", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0))
    pyro.sample("u", dist.Normal(torch.tensor(0.0, dtype=torch.float64), torch.exp(v / 2)))


def fit_funnel_guide(guide, steps: int, seed: int) -> tuple[np.ndarray, float, float]:
    """Fit ``guide`` to the funnel; return 4000 draws of v, the ELBO (2000 draws) and seconds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    svi = pyro.infer.SVI(funnel, guide, pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.1 ** (1 / steps)}),
                         pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True))
    for _ in range(steps):
        svi.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        elbo = -pyro.infer.Trace_ELBO(num_particles=2000, vectorize_particles=True).loss(funnel, guide)
        with pyro.plate("draws", 4000, dim=-1):
            v_draws = guide()["v"].numpy()
    return v_draws, elbo, seconds


torch.set_default_dtype(torch.float64)  # AutoNormalizingFlow builds its base in the default dtype
try:
    funnel_fits = {"RealNVP coupling guide": fit_funnel_guide(rf.coupling_guide(funnel, num_layers=4, hidden=16),
                                                              FUNNEL_STEPS, SEED),
                   "mean field (AutoNormal)": fit_funnel_guide(pyro.infer.autoguide.AutoNormal(funnel),
                                                               FUNNEL_STEPS, SEED)}
finally:
    torch.set_default_dtype(torch.float32)
v_exact = np.random.default_rng(SEED).normal(0, 3, 20000)
funnel_tab = pd.DataFrame({name: {"sd of v (exact 3)": v_d.std(), "W1(v) / 3": stats.wasserstein_distance(v_d, v_exact) / 3,
                                  "ELBO = -KL(q || p)": elbo, "seconds": sec}
                           for name, (v_d, elbo, sec) in funnel_fits.items()}).T
display(funnel_tab)
flow_row, mf_row = funnel_tab.iloc[0], funnel_tab.iloc[1]
assert flow_row["ELBO = -KL(q || p)"] > mf_row["ELBO = -KL(q || p)"]  # the flow is closer to the funnel

fig, ax = plt.subplots(figsize=(7, 3))
vv = np.linspace(-10, 10, 300)
ax.plot(vv, stats.norm(0, 3).pdf(vv), "k", label="exact N(0, 3^2)")
for name, (v_d, _, _) in funnel_fits.items():
    ax.hist(v_d, bins=60, density=True, alpha=0.4, label=name)
ax.set_xlabel("v")
ax.set_ylabel("density")
ax.set_title("Neal's funnel: v's marginal under each guide")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Noise-contrastive estimation (papers §4.1)
#
# An unnormalised model $p_m(u;\theta)=p_m^0(u;\alpha)/c$ with the normaliser $c$ as a free
# parameter (eq 8.3). Maximum likelihood cannot learn $c$ (eq 8.4): $\sum_u\log p_m^0(u)-N\log c$
# grows without bound as $c\to0$. NCE instead trains a logistic classifier between the data
# and noise draws from a known $p_n$: $h(u)=p_m(u)/(p_m(u)+\nu\,p_n(u))$ (eq 8.8 with $\nu$
# noise draws per data point; $\nu=1$ in the notes) and maximises
# $\frac1{2T}\sum_t\log h(x_t)+\log(1-h(y_t))$ (eq 8.11). Because $p_n$ is normalised, the
# classifier can only be right if $p_m$ is normalised too, so $c$ is learned.
#
# `nce_unnormalized`: $p_m^0(x)=\exp(-\tau(x-\mu)^2/2)$, whose true log normaliser is
# $\tfrac12\log(2\pi/\tau)$. The Bayesian back-ends are left out of the default comparison for
# the reason eq 8.4 gives (listed below the table, as `python -m zoo compare` prints it).

# %%
ncmp = zoo.compare("nce_unnormalized", seed=SEED)
print_comparison(ncmp.table)
nd, md = ncmp.results["nce"].diagnostics, ncmp.results["mle"].diagnostics
print(f"NCE: learned log Z {nd['log_z']:.4f}, exact log Z at its tau {nd['log_z_exact']:.4f}; "
      f"MLE (true normaliser): {md['log_z']:.4f}")
assert abs(nd["log_z_error"]) < 0.2  # NCE learned the normaliser

# eq 8.4: with log Z free, the log-likelihood only grows as log Z falls
x_nce = zoo.simulate("nce_unnormalized", seed=0)[0]["x"]
tau_hat = 1 / x_nce.var()
loglik_free = {float(lz): float(np.sum(-0.5 * tau_hat * (x_nce - x_nce.mean()) ** 2) - len(x_nce) * lz)
               for lz in (nce.exact_log_z(tau_hat), 0.0, -10.0, -100.0)}
print("log-likelihood with a free log Z:", {round(k, 3): round(v, 1) for k, v in loglik_free.items()})
assert all(np.diff(list(loglik_free.values())) > 0)  # eq 8.4: no maximum

# %% [markdown]
# **How good is NCE's normaliser, and how does the noise ratio matter?** Over many simulated
# data sets ($N=200$ from $\mathcal N(1, 0.5^2)$), we record two errors of the learned $\log Z$:
# against the exact normaliser *at the learned* $\tau$ (how far from normalised the learned
# density is) and against the *true* $\log Z$ (an estimation error, which the MLE has too).
# Gutmann and Hyvärinen show NCE's variance falls towards the MLE's (the Cramér–Rao bound) as
# $\nu$ grows.

# %%
def nce_spread(nu: int | None, repeats: int, n: int = 200, mu: float = 1.0, tau: float = 4.0) -> dict:
    """Errors of the learned log Z over ``repeats`` data sets; nu=None for maximum likelihood."""
    norm_err, true_err = [], []
    for r in range(repeats):
        rng = np.random.default_rng(10_000 + r)
        x = rng.normal(mu, 1 / np.sqrt(tau), n)
        if nu is None:
            est = nce.mle_fit(x)
        else:
            loc, scale = x.mean(), 1.5 * x.std()
            est = nce.nce_fit(x, rng.normal(loc, scale, nu * n), loc, scale)
        norm_err.append(est["log_z"] - nce.exact_log_z(est["tau"]))
        true_err.append(est["log_z"] - nce.exact_log_z(tau))
    return {"normalisation error: mean": np.mean(norm_err), "normalisation error: sd": np.std(norm_err, ddof=1),
            "error vs true log Z: mean": np.mean(true_err), "error vs true log Z: sd": np.std(true_err, ddof=1)}


t0 = time.perf_counter()
spread = pd.DataFrame({f"NCE nu={nu}": nce_spread(nu, NCE_REPEATS) for nu in (1, 4, 16)}
                      | {"MLE": nce_spread(None, NCE_REPEATS)}).T
print(f"{NCE_REPEATS} data sets per row, {time.perf_counter() - t0:.1f} s")
display(spread)

sd_norm = spread["normalisation error: sd"]
assert sd_norm["NCE nu=1"] > sd_norm["NCE nu=4"] > sd_norm["NCE nu=16"]  # more noise, less error

# %% [markdown]
# ## Summary
#
# * **VAE**: the IWAE bound sits above the ELBO, as Jensen says; the shared encoder costs a
#   measurable amortisation gap against a free Gaussian per point.
# * **VRNN**: at this budget the latent path collapses onto its prior (KL ≈ 0 at every step):
#   a good ELBO does not mean the latents are used.
# * **Discrete latents**: score-function gradients are unbiased but noisy; baselines cut the
#   variance; Gumbel-softmax trades variance for bias through its temperature; with $K$ small,
#   enumerating is exact and trains best per step and per second.
# * **Flows**: the log-determinant is exactly the sum of the coupling layers' $s$; the flow
#   fits the moons far better than a Gaussian on the typical point, but a held-out *mean*
#   log-likelihood can be wrecked by one point; as a guide the same layers fit a funnel that
#   mean field cannot.
# * **NCE** learns the normaliser that maximum likelihood cannot, and approaches the MLE's
#   precision as the noise ratio grows.

# %%
elapsed = time.perf_counter() - START
print(f"notebook ran in {elapsed:.0f} s")

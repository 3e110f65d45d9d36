"""A categorical latent variable and the gradient estimators of notes 004 3.4, side by side.

Model: x_n | c_n ~ Normal(locs[c_n], sigma), c_n uniform over K categories, locs ~ Normal.
Variational family: q(locs) = Normal(m, s) (reparameterised) and an amortised softmax-linear
encoder q(c_n | x_n) = softmax(a * x_n + b) (the exact posterior's logits are linear in x_n, so
the family contains the exact conditional). The gradient of the ELBO with respect to the
encoder's (a, b) is what the estimators differ in:

- ``reinforce``: the score function (eq 3.3), learning signal f_n = log p(x_n, c_n | locs) -
  log q(c_n | x_n) per point (the plate makes each c_n affect only its own term).
- ``reinforce_baseline``: the same minus a per-point decaying average of f_n (a constant
  baseline, eqs 3.18 to 3.22).
- ``nvil``: minus a learned input-dependent baseline b(x_n), a small network trained by the
  mean squared error of eq 3.23 (Mnih and Gregor 2014; without their variance normalisation).
- ``gumbel_softmax``: the relaxed one-hot c~ = softmax((logits + Gumbel noise) / temperature)
  (eqs 3.10 to 3.14) fed to the likelihood as the mean c~ . locs, with the KL of q(c | x) from
  the prior in closed form; biased, by a bias that shrinks with the temperature.
- ``enumeration``: the exact gradient, summing over the K categories.

`gradient_variance` measures every estimator's gradient at one parameter point against the
enumerated exact gradient; the back-ends train the same family with each estimator and record
the ELBO (computed exactly over c) against wall time.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from sklearn.metrics import adjusted_rand_score
from torch.distributions import constraints

from zoo.core.errors import ZooError
from zoo.core.problem import DTYPE
from zoo.core.spec import Backend, Backends, DataKey, Fit, Hyper, ModelSpec, Scoring
from zoo.inference.common import single_thread
from zoo.inference.svi import JIT_ELBO_ENUM

ESTIMATORS = ("reinforce", "reinforce_baseline", "nvil", "gumbel_softmax", "enumeration")
BASELINE_DECAY = 0.9


def model(x=None, N=None, K=3, mu0=0.0, sigma0=3.0, sigma=1.0):
    """Points from K Gaussian clusters with equal weights; the cluster of each point is a
    categorical latent (seed 004 3.4 discrete latent variables; 002 8 Gumbel-softmax).

    Generative story::

        locs_k ~ Normal(mu0, sigma0)               # k = 0..K-1, cluster means
        c_n ~ Categorical(1/K, ..., 1/K)           # n = 1..N, the discrete latent
        x_n | c_n, locs ~ Normal(locs[c_n], sigma) # sigma known

    ``c`` is local to the data plate and enumerable, so it can be summed out exactly; the
    model-specific back-ends instead fit an encoder q(c_n | x_n) with a score-function,
    baseline, NVIL or Gumbel-softmax gradient (notes 3.4.1 to 3.4.3).
    """
    K = int(K)
    locs = pyro.sample("locs", dist.Normal(mu0, sigma0).expand([K]).to_event(1))
    with pyro.plate("data", N if x is None else x.shape[0]):
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(K, dtype=DTYPE)),
                        infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(Vindex(locs)[..., c], sigma), obs=x)


def check(data: dict, hyper: dict) -> None:
    """At least two categories: with K = 1 there is no discrete latent to estimate."""
    if int(hyper["K"]) < 2:
        raise ZooError(f"model 'discrete_latent': hyperparameter K must be at least 2, got K={hyper['K']!r}")


# ---------------------------------------------------------------------------------------------
# the estimators


def _log_lik(x: torch.Tensor, locs: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x_n; locs_k, sigma) for every n and k: shape (..., N, K) from locs (..., K)."""
    return dist.Normal(locs.unsqueeze(-2), sigma).log_prob(x.unsqueeze(-1))


def surrogate(estimator: str, a: torch.Tensor, b: torch.Tensor, locs: torch.Tensor, x: torch.Tensor,
              sigma: float, *, temperature: float = 0.5, baseline: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw of each batch member's surrogate objective, whose gradient is the estimator.

    Parameters
    ----------
    estimator : one of `ESTIMATORS`.
    a, b : encoder slopes and intercepts, shape (S, K) or (K,): q(c | x_n) = softmax(a x_n + b).
    locs : cluster means, shape (S, K) or (K,).
    x : data, shape (N,).
    baseline : shape (..., N), subtracted from the learning signal (``reinforce_baseline``,
        ``nvil``).

    Returns
    -------
    surrogate : shape (S,) (or ()): its gradient with respect to (a, b) is the estimate, and for
        the unbiased estimators its expectation is the ELBO's c-part, sum_n E_q[f_n].
    signal : the learning signal f_n, detached, shape (S, N) (zeros for the other estimators).
    """
    K = locs.shape[-1]
    logits = x.unsqueeze(-1) * a.unsqueeze(-2) + b.unsqueeze(-2)  # (S, N, K)
    log_p = _log_lik(x, locs, sigma) - math.log(K)  # log p(x_n, c = k | locs)
    logits = logits.expand(torch.broadcast_shapes(logits.shape, log_p.shape))
    log_p = log_p.expand(logits.shape)
    log_q = torch.log_softmax(logits, -1)
    if estimator == "enumeration":
        value = (log_q.exp() * (log_p - log_q)).sum(-1).sum(-1)
        return value, torch.zeros_like(value)
    if estimator == "gumbel_softmax":
        relaxed = dist.RelaxedOneHotCategorical(torch.tensor(temperature, dtype=DTYPE), logits=logits).rsample()
        mean = (relaxed * locs.unsqueeze(-2)).sum(-1)
        log_lik = dist.Normal(mean, sigma).log_prob(x)
        kl = (log_q.exp() * (log_q + math.log(K))).sum(-1)
        value = (log_lik - kl).sum(-1)
        return value, torch.zeros_like(value)
    if estimator not in ESTIMATORS:
        raise ZooError(f"unknown gradient estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    c = dist.Categorical(logits=logits.detach()).sample()  # (S, N)
    log_q_c = log_q.gather(-1, c.unsqueeze(-1)).squeeze(-1)
    f = log_p.gather(-1, c.unsqueeze(-1)).squeeze(-1) - log_q_c
    signal = f.detach()
    centred = signal if estimator == "reinforce" or baseline is None else signal - baseline
    # f carries the pathwise gradient (locs) and -grad log q; centred * grad log q is eq 3.20
    return (f + centred * log_q_c).sum(-1), signal


class NVILBaseline(torch.nn.Module):
    """b(x): a one-hidden-layer network fitted to the learning signal by squared error (eq 3.23)."""

    def __init__(self, x: torch.Tensor, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.Tanh(),
                                           torch.nn.Linear(hidden, 1)).to(DTYPE)
        self.shift, self.scale = float(x.mean()), float(x.std()) or 1.0
        self.opt = torch.optim.Adam(self.parameters(), lr=1e-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x - self.shift) / self.scale).unsqueeze(-1)).squeeze(-1)

    def update(self, x: torch.Tensor, signal: torch.Tensor) -> None:
        """One Adam step on mean (signal - b(x))^2 over the draws in ``signal`` (..., N)."""
        self.opt.zero_grad()
        ((signal - self(x)) ** 2).mean().backward()
        self.opt.step()


def exact_gradient(a: np.ndarray, b: np.ndarray, locs: np.ndarray, x: np.ndarray, sigma: float) -> np.ndarray:
    """The exact gradient of sum_n E_q[f_n] with respect to (a, b), by enumeration, shape (2K,)."""
    a_t = torch.as_tensor(a, dtype=DTYPE).clone().requires_grad_()
    b_t = torch.as_tensor(b, dtype=DTYPE).clone().requires_grad_()
    value, _ = surrogate("enumeration", a_t, b_t, torch.as_tensor(locs, dtype=DTYPE),
                         torch.as_tensor(x, dtype=DTYPE), sigma)
    ga, gb = torch.autograd.grad(value, [a_t, b_t])
    return torch.cat([ga, gb]).numpy()


def gradient_samples(x: np.ndarray, locs: np.ndarray, a: np.ndarray, b: np.ndarray, *, sigma: float = 1.0,
                     estimators: Sequence[str] = ("reinforce", "reinforce_baseline", "nvil", "gumbel_softmax"),
                     temperatures: Sequence[float] = (0.1, 0.5, 1.0), num_draws: int = 1000, seed: int = 0,
                     warmup: int = 100) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Independent one-draw gradient estimates with respect to the encoder (a, b) at one point.

    The baselines are first brought to their steady state at this point (``warmup`` draws):
    the decaying average by its own update, the NVIL network by its own squared-error steps;
    they are then held fixed, so every estimate is unbiased.

    Returns
    -------
    samples : label (``reinforce``, ``gumbel_softmax:0.5``, ...) to an array (num_draws, 2K):
        the gradient with respect to a (first K) and b (last K).
    exact : the exact gradient (2K,).
    """
    with single_thread():
        return _gradient_samples(x, locs, a, b, sigma, estimators, temperatures, num_draws, seed, warmup)


def _gradient_samples(x, locs, a, b, sigma, estimators, temperatures, num_draws, seed, warmup):
    pyro.set_rng_seed(seed)
    x_t, locs_t = torch.as_tensor(x, dtype=DTYPE), torch.as_tensor(locs, dtype=DTYPE)
    a0, b0 = torch.as_tensor(a, dtype=DTYPE), torch.as_tensor(b, dtype=DTYPE)
    out: dict[str, np.ndarray] = {}
    for est in estimators:
        labels = [(f"{est}:{t:g}", t) for t in temperatures] if est == "gumbel_softmax" else [(est, 0.5)]
        for label, temp in labels:
            base = None
            if est == "reinforce_baseline":
                base = torch.zeros(len(x), dtype=DTYPE)
                for _ in range(warmup):
                    with torch.no_grad():
                        _, sig = surrogate(est, a0, b0, locs_t, x_t, sigma)
                    base = BASELINE_DECAY * base + (1 - BASELINE_DECAY) * sig
            elif est == "nvil":
                net = NVILBaseline(x_t, seed=seed)
                for _ in range(warmup):
                    with torch.no_grad():
                        _, sig = surrogate(est, a0.expand(64, -1), b0.expand(64, -1), locs_t, x_t, sigma)
                    net.update(x_t, sig)
                with torch.no_grad():
                    base = net(x_t)
            a_s = a0.expand(num_draws, -1).clone().requires_grad_()
            b_s = b0.expand(num_draws, -1).clone().requires_grad_()
            value, _ = surrogate(est, a_s, b_s, locs_t, x_t, sigma, temperature=temp, baseline=base)
            ga, gb = torch.autograd.grad(value.sum(), [a_s, b_s])
            out[label] = torch.cat([ga, gb], -1).numpy()
    return out, exact_gradient(a, b, locs, x, sigma)


def default_point(x: np.ndarray, K: int, sigma: float) -> dict[str, np.ndarray]:
    """The point `gradient_variance` measures at: locs at the (k + 1/2)/K quantiles of x, and
    an encoder halfway (in its logits) from uniform to the exact posterior given those locs."""
    locs = np.quantile(x, (np.arange(K) + 0.5) / K)
    return {"locs": locs, "a": 0.5 * locs / sigma**2, "b": -0.25 * locs**2 / sigma**2}


def variance_table(samples: dict[str, np.ndarray], exact: np.ndarray) -> pd.DataFrame:
    """Summarise `gradient_samples` output: one row per estimator (see `gradient_variance`)."""
    norm = float(np.linalg.norm(exact))
    rows = [{"estimator": "enumeration", "temperature": np.nan, "mean_grad_norm": norm, "variance": 0.0,
             "bias_norm": 0.0, "bias_max_z": 0.0, "exact_grad_norm": norm}]
    for label, g in samples.items():
        est, _, temp = label.partition(":")
        mean, sd = g.mean(0), g.std(0, ddof=1)
        z = np.abs(mean - exact) / np.maximum(sd / np.sqrt(len(g)), 1e-300)
        rows.append({"estimator": est, "temperature": float(temp) if temp else np.nan,
                     "mean_grad_norm": float(np.linalg.norm(mean)), "variance": float(np.sum(sd**2)),
                     "bias_norm": float(np.linalg.norm(mean - exact)), "bias_max_z": float(z.max()),
                     "exact_grad_norm": norm})
    return pd.DataFrame(rows)


def gradient_variance(data: dict, *, K: int = 3, sigma: float = 1.0, point: dict | None = None,
                      estimators: Sequence[str] = ("reinforce", "reinforce_baseline", "nvil", "gumbel_softmax"),
                      temperatures: Sequence[float] = (0.1, 0.5, 1.0), num_draws: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """Each estimator's one-draw gradient of the ELBO with respect to the encoder, at one point.

    Parameters
    ----------
    data : ``{"x": (N,)}``, for example ``zoo.simulate("discrete_latent", seed=0)[0]``.
    K, sigma : the model's hyperparameters.
    point : ``{"locs", "a", "b"}`` arrays of shape (K,); default `default_point`.
    estimators : which estimators (the exact ``enumeration`` row is always there).
    temperatures : the Gumbel-softmax temperatures.
    num_draws : independent estimates per estimator.

    Returns
    -------
    DataFrame, one row per estimator (and temperature): ``estimator``, ``temperature``,
    ``mean_grad_norm`` (norm of the mean estimate), ``variance`` (trace of the covariance of
    one estimate), ``bias_norm`` (norm of mean - exact), ``bias_max_z`` (largest
    |mean - exact| / standard error over the 2K coordinates), ``exact_grad_norm``. The
    ``enumeration`` row is the exact gradient (variance 0).
    """
    x = np.asarray(data["x"], dtype=float)
    point = point or default_point(x, K, sigma)
    samples, exact = gradient_samples(x, point["locs"], point["a"], point["b"], sigma=sigma,
                                      estimators=estimators, temperatures=temperatures,
                                      num_draws=num_draws, seed=seed)
    return variance_table(samples, exact)


# ---------------------------------------------------------------------------------------------
# training with each estimator


def _softplus_inv(y: float) -> float:
    return math.log(math.expm1(y))


def elbo_exact(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               sigma: float, mu0: float, sigma0: float, locs: torch.Tensor) -> torch.Tensor:
    """The ELBO with c summed out exactly, at draws ``locs`` (..., K) of q(locs) = N(m, s):
    sum_n E_q(c)[log p(x_n, c | locs) - log q(c | x_n)] - KL(q(locs) || p(locs)), shape (...)."""
    value, _ = surrogate("enumeration", a, b, locs, x, sigma)
    kl = torch.distributions.kl_divergence(dist.Normal(m, s), dist.Normal(mu0, sigma0)).sum(-1)
    return value - kl


def train(x: np.ndarray, estimator: str, *, K: int = 3, sigma: float = 1.0, mu0: float = 0.0,
          sigma0: float = 3.0, temperature: float = 0.5, num_steps: int = 500, num_particles: int = 1,
          lr: float = 0.05, max_seconds: float = 600.0, seed: int = 0) -> dict[str, Any]:
    """Fit q(locs) q(c | x) by Adam with one gradient estimator for the encoder.

    Returns
    -------
    dict with the variational parameters ``m``, ``s``, ``a``, ``b`` (numpy), ``elbo_trace``
    (the ELBO with c summed out exactly, at each step's draw of locs: unbiased for the ELBO
    and comparable across estimators), ``time_trace`` (wall seconds at each step), ``steps``.
    """
    with single_thread():
        return _train(x, estimator, K, sigma, mu0, sigma0, temperature, num_steps, num_particles, lr,
                      max_seconds, seed)


def _train(x, estimator, K, sigma, mu0, sigma0, temperature, num_steps, num_particles, lr, max_seconds, seed):
    pyro.set_rng_seed(seed)
    x_t = torch.as_tensor(x, dtype=DTYPE)
    init = np.quantile(x, (np.arange(K) + 0.5) / K)
    m = torch.tensor(init, dtype=DTYPE, requires_grad=True)
    rho = torch.full((K,), _softplus_inv(0.5), dtype=DTYPE, requires_grad=True)
    a = torch.zeros(K, dtype=DTYPE, requires_grad=True)
    b = torch.zeros(K, dtype=DTYPE, requires_grad=True)
    opt = torch.optim.Adam([m, rho, a, b], lr=lr)
    base = torch.zeros(len(x), dtype=DTYPE)
    net = NVILBaseline(x_t, seed=seed) if estimator == "nvil" else None
    elbo_trace, time_trace = [], []
    start = time.perf_counter()
    for step in range(num_steps):
        s = torch.nn.functional.softplus(rho)
        locs = m + s * torch.randn((num_particles, K), dtype=DTYPE)
        baseline = base if estimator == "reinforce_baseline" and step > 0 else None
        if net is not None:
            with torch.no_grad():
                baseline = net(x_t)
        value, signal = surrogate(estimator, a, b, locs, x_t, sigma, temperature=temperature, baseline=baseline)
        kl = torch.distributions.kl_divergence(dist.Normal(m, s), dist.Normal(mu0, sigma0)).sum()
        loss = -(value.mean() - kl)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if estimator == "reinforce_baseline":
            base = signal.mean(0) if step == 0 else BASELINE_DECAY * base + (1 - BASELINE_DECAY) * signal.mean(0)
        elif net is not None:
            net.update(x_t, signal)
        with torch.no_grad():
            elbo = elbo_exact(x_t, m, torch.nn.functional.softplus(rho), a, b, sigma, mu0, sigma0, locs[0])
        if not torch.isfinite(elbo):
            raise ZooError(f"model 'discrete_latent', estimator {estimator!r}: the ELBO became {elbo.item()}; lower lr")
        elbo_trace.append(float(elbo))
        time_trace.append(time.perf_counter() - start)
        if time_trace[-1] > max_seconds:
            break
    with torch.no_grad():
        s = torch.nn.functional.softplus(rho)
    return {"m": m.detach().numpy(), "s": s.numpy(), "a": a.detach().numpy(), "b": b.detach().numpy(),
            "elbo_trace": elbo_trace, "time_trace": time_trace, "steps": len(elbo_trace)}


def _make_fit(estimator: str):
    def fit(problem, *, seed: int, num_samples: int, num_chains: int, num_steps: int, num_particles: int,
            lr: float, max_seconds: float, temperature: float = 0.5, progress=None) -> Fit:
        h = problem.np_hyper
        x = problem.np_data["x"]
        K, sigma, mu0, sigma0 = int(h["K"]), float(h["sigma"]), float(h["mu0"]), float(h["sigma0"])
        q = train(x, estimator, K=K, sigma=sigma, mu0=mu0, sigma0=sigma0, temperature=temperature,
                  num_steps=num_steps, num_particles=num_particles, lr=lr, max_seconds=max_seconds, seed=seed)
        rng = np.random.default_rng(seed)
        shape = (num_chains, num_samples)
        locs = rng.normal(q["m"], q["s"], size=shape + (K,))
        logits = np.outer(x, q["a"]) + q["b"]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        cum = probs.cumsum(1)
        u = rng.random(shape + (len(x), 1))
        c = np.minimum((u > cum).sum(-1), K - 1)
        # final ELBO (c summed out exactly) over 200 draws of q(locs), and the estimator's
        # gradient variance at the fitted point (locs at their mean)
        with torch.no_grad():
            t = {k: torch.as_tensor(v, dtype=DTYPE) for k, v in q.items() if k in ("m", "s", "a", "b")}
            draws = torch.as_tensor(rng.normal(q["m"], q["s"], size=(200, K)), dtype=DTYPE)
            elbo = float(elbo_exact(torch.as_tensor(x, dtype=DTYPE), t["m"], t["s"], t["a"], t["b"],
                                    sigma, mu0, sigma0, draws).mean())
        if estimator == "enumeration":
            grad_var = 0.0
        else:
            g, _ = gradient_samples(x, q["m"], q["a"], q["b"], sigma=sigma, estimators=(estimator,),
                                    temperatures=(temperature,), num_draws=200, seed=seed, warmup=50)
            grad_var = float(np.sum(np.var(next(iter(g.values())), axis=0, ddof=1)))
        trace = q["elbo_trace"]
        return Fit(posterior={"locs": locs, "c": c},
                   diagnostics={"elbo": elbo, "elbo_trace": trace, "time_trace": q["time_trace"],
                                "grad_variance": grad_var, "steps": q["steps"],
                                "seconds_per_step": q["time_trace"][-1] / q["steps"]},
                   kind="independent")

    return fit


def _backend(estimator: str, summary: str) -> Backend:
    options = {"num_samples": 1000, "num_chains": 4, "num_steps": 500, "num_particles": 1, "lr": 0.05,
               "max_seconds": 600.0, "progress": None}
    if estimator == "gumbel_softmax":
        options["temperature"] = 0.5
    return Backend(name=estimator, fit=_make_fit(estimator), options=options, summary=summary,
                   quick={"num_samples": 20, "num_chains": 2, "num_steps": 20})


BACKENDS = {
    "reinforce": _backend("reinforce", "encoder q(c|x) trained with the score-function gradient (notes 3.4.1)"),
    "reinforce_baseline": _backend("reinforce_baseline", "score function minus a per-point decaying-average "
                                   "baseline (notes 3.4.3, eq 3.20)"),
    "nvil": _backend("nvil", "score function minus a learned baseline b(x) (NVIL, notes eq 3.23)"),
    "gumbel_softmax": _backend("gumbel_softmax", "Gumbel-softmax relaxation at a temperature "
                               "(notes 3.4.2; biased)"),
    "enumeration": _backend("enumeration", "the same encoder trained with the exact gradient, "
                            "summed over the K categories"),
}


def relabel(posterior: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sort the clusters by their mean in every draw and remap ``c`` to match."""
    if "locs" not in posterior:
        return posterior
    out = dict(posterior)
    order = np.argsort(posterior["locs"], axis=-1)
    out["locs"] = np.take_along_axis(posterior["locs"], order, -1)
    if "c" in posterior:
        rank = np.argsort(order, axis=-1)  # old label -> new label, per draw
        c = np.asarray(posterior["c"]).astype(np.int64)
        out["c"] = np.take_along_axis(rank, c, -1).astype(posterior["c"].dtype)
    return out


def diagnose(problem, posterior: dict[str, np.ndarray], truth: dict | None) -> dict[str, Any]:
    """Mixture log-likelihood per point at the posterior mean of locs (and at the truth), and the
    adjusted Rand index of the most frequent c per point against the true clusters."""
    x = problem.np_data["x"]
    sigma, K = float(problem.np_hyper["sigma"]), int(problem.np_hyper["K"])

    def loglik(locs: np.ndarray) -> float:
        lp = -0.5 * ((x[:, None] - locs[None]) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
        top = lp.max(1, keepdims=True)
        return float(np.mean(top[:, 0] + np.log(np.exp(lp - top).mean(1))))

    out: dict[str, Any] = {}
    if "locs" in posterior:
        out["loglik_per_point"] = loglik(posterior["locs"].reshape(-1, K).mean(0))
    if truth is not None and "locs" in truth:
        out["truth_loglik_per_point"] = loglik(np.asarray(truth["locs"], dtype=float))
    if truth is not None and "c" in truth and "c" in posterior:
        c = np.asarray(posterior["c"]).reshape(-1, len(x)).astype(np.int64)
        mode = np.array([np.bincount(c[:, n], minlength=K).argmax() for n in range(len(x))])
        out["ari"] = float(adjusted_rand_score(np.asarray(truth["c"]).astype(int), mode))
    return out


SPEC = ModelSpec(
    name="discrete_latent",
    model=model,
    data={"x": DataKey(("N",), support=constraints.real)},
    latent_sites=("locs",),
    dims={"locs": ("component",)},
    hyper={
        "K": Hyper(3, constraints.positive_integer),
        "mu0": Hyper(0.0, constraints.real),
        "sigma0": Hyper(3.0, constraints.positive),
        "sigma": Hyper(1.0, constraints.positive),
    },
    sizes={"N": 100},
    seed_section="004 3.4 (discrete latent variables: REINFORCE, Gumbel-softmax, control variates, NVIL), "
                 "002 8 (Gumbel-softmax)",
    check=check,
    scoring=Scoring(
        relabel=relabel,
        relabel_note="clusters sorted by their mean (locs) in every draw, c remapped to match",
        diagnose=diagnose,
    ),
    backends=Backends(
        default=("enumeration",),
        own=BACKENDS,
        options=JIT_ELBO_ENUM,
    ),
)

"""A RealNVP normalizing flow (affine coupling layers) fitted by maximum likelihood, and the
same coupling flows as an SVI guide family.

Notes 004 3.6: a bijection z = f(x) built from coupling layers (eq 3.4)
y_{1:d} = x_{1:d}, y_{d+1:D} = x_{d+1:D} * exp(s(x_{1:d})) + t(x_{1:d}), whose inverse is
explicit (eq 3.5) and whose Jacobian is triangular (eq 3.6), so log|det| = sum_j s_j (eq 3.7);
layers alternate which half they transform (eq 3.8) and the log-likelihood is
log p(x) = log N(f(x); 0, I) + sum_layers log|det| (eq 3.9).

The layers are Pyro's ``AffineCoupling`` transforms: Pyro's layer is exactly eq 3.4 with
t = mu(x_{1:d}) and s = log sigma(x_{1:d}) from one dense network, except that Pyro clamps
s to [-5, 3] (still a function of x_{1:d}, so still eq 3.4 and still invertible). A ``Permute``
between layers swaps the halves (eq 3.8); it is volume preserving. Pyro's transforms map the
base variable to the data (x = T(z)), so f = T^{-1}: the inverse of a coupling layer is again
a coupling layer (eq 3.5), and the family is the same.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from scipy import stats
from sklearn.datasets import make_moons
from torch.distributions import constraints

from zoo.core.errors import ZooError
from zoo.core.files import atomic_write
from zoo.core.problem import DTYPE
from zoo.core.spec import Backend, Backends, DataKey, Fit, Hyper, ModelSpec
from zoo.inference.common import single_thread
from zoo.inference.flows import coupling_guide, coupling_transform  # noqa: F401 (public here too)


def flow_distribution(flow: T.ComposeTransformModule, dim: int) -> dist.TransformedDistribution:
    """p(x): a standard normal base pushed through ``flow`` (eq 3.3)."""
    base = dist.Normal(torch.zeros(dim, dtype=DTYPE), torch.ones(dim, dtype=DTYPE)).to_event(1)
    return dist.TransformedDistribution(base, [flow])


def log_det_by_layers(flow: T.ComposeTransformModule, z: torch.Tensor) -> torch.Tensor:
    """log|det dT/dz| accumulated layer by layer (eqs 3.7 and 3.9), shape (batch,)."""
    total = torch.zeros(z.shape[:-1], dtype=z.dtype)
    for part in flow.parts:
        y = part(z)
        total = total + part.log_abs_det_jacobian(z, y)
        z = y
    return total


_DEFAULT_FLOWS: dict[tuple[int, int], T.ComposeTransformModule] = {}


def _default_flow(num_layers: int, hidden: int) -> T.ComposeTransformModule:
    key = (num_layers, hidden)
    if key not in _DEFAULT_FLOWS:
        _DEFAULT_FLOWS[key] = coupling_transform(2, num_layers, hidden, seed=0)
    return _DEFAULT_FLOWS[key]


def model(x=None, N=None, num_layers=4, hidden=16):
    """A density on R^2 given by a RealNVP flow (seed 004 3.6, affine coupling, eqs 3.4 to 3.9).

    Generative story::

        z_i ~ Normal(0, I_2)                        # i = 1..N, the base variable
        x_i = T(z_i), T = T_L o P o ... o P o T_1   # coupling layers (eq 3.4) and swaps (eq 3.8)
        log p(x_i) = log N(T^{-1}(x_i); 0, I) - sum_l log|det dT_l|   (eq 3.9)

    The coupling networks' weights are parameters, not latent variables: there are no latent
    sites, and the ``mle`` back-end fits the weights by maximum likelihood. The Pyro model
    itself carries the flow at its fixed initial weights (seed 0), so it can be traced and
    simulated from; the fitted flow is returned by `fit_flow`.
    """
    flow = _default_flow(int(num_layers), int(hidden))
    with pyro.plate("data", N if x is None else x.shape[0]):
        pyro.sample("x", flow_distribution(flow, 2), obs=x)


def two_moons(n: int = 500, noise: float = 0.08, seed: int = 0) -> np.ndarray:
    """scikit-learn's two moons, each coordinate standardised to mean 0 and sd 1, shape (n, 2)."""
    x, _ = make_moons(n_samples=n, noise=noise, random_state=seed)
    return (x - x.mean(0)) / x.std(0)


@dataclass
class FlowFit:
    """A flow fitted by maximum likelihood: the flow, its density and the training trace."""

    flow: T.ComposeTransformModule
    loglik_trace: list[float]
    seconds: float
    density: dist.TransformedDistribution = field(init=False)

    def __post_init__(self) -> None:
        self.density = flow_distribution(self.flow, 2)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Per-point log density under the fitted flow."""
        with torch.no_grad():
            return self.density.log_prob(torch.as_tensor(x, dtype=DTYPE)).numpy()


def fit_flow(x: np.ndarray, num_layers: int = 4, hidden: int = 16, num_steps: int = 800,
             lr: float = 5e-3, seed: int = 0) -> FlowFit:
    """Maximum likelihood (eq 3.9) for a RealNVP flow by full-batch Adam.

    Returns
    -------
    `FlowFit` with ``loglik_trace``: the mean log-likelihood per point at every step.
    """
    with single_thread():
        return _fit_flow(x, num_layers, hidden, num_steps, lr, seed)


def _fit_flow(x: np.ndarray, num_layers: int, hidden: int, num_steps: int, lr: float, seed: int) -> FlowFit:
    x_t = torch.as_tensor(np.asarray(x), dtype=DTYPE)
    flow = coupling_transform(x_t.shape[-1], num_layers, hidden, seed=seed)
    density = flow_distribution(flow, x_t.shape[-1])
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1 / num_steps))
    trace: list[float] = []
    start = time.perf_counter()
    for _ in range(num_steps):
        opt.zero_grad()
        # a fresh tensor each step: Pyro's coupling layers cache their last (x, y) pair
        loss = -density.log_prob(x_t.clone()).mean()
        if not torch.isfinite(loss):
            raise ZooError(f"model 'realnvp_flow': the log-likelihood became {loss.item()} during "
                           "training; lower lr")
        loss.backward()
        opt.step()
        sched.step()
        trace.append(-loss.item())
    return FlowFit(flow, trace, time.perf_counter() - start)


def density_plot(fit: FlowFit, x: np.ndarray, path: str | Path, grid: int = 150) -> Path:
    """A PNG of the fitted density (contours over a grid) with the data on top.

    Written atomically with `zoo.core.files.atomic_write`; returns the path.
    """
    import matplotlib.pyplot as plt

    x = np.asarray(x)
    lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid))
    dens = np.exp(fit.log_prob(np.stack([g0.ravel(), g1.ravel()], 1))).reshape(g0.shape)
    fig, ax = plt.subplots(figsize=(5, 4))
    cs = ax.contourf(g0, g1, dens, levels=30, cmap="viridis")
    ax.scatter(x[:, 0], x[:, 1], s=2, c="white", alpha=0.5)
    fig.colorbar(cs, ax=ax, label="density")
    ax.set_title("RealNVP density (maximum likelihood)")
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def _fit_mle(problem, *, seed: int, num_samples: int, num_chains: int, num_steps: int, lr: float,
             holdout: float, progress=None) -> Fit:
    x = problem.np_data["x"]
    if not 0 < holdout < 1 or len(x) * holdout < 2 or len(x) * (1 - holdout) < 3:
        raise problem.error(f"option holdout must leave at least 2 test and 3 training points, got {holdout!r}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = round(holdout * len(x))
    test, train = x[order[:n_test]], x[order[n_test:]]
    fit = fit_flow(train, int(problem.np_hyper["num_layers"]), int(problem.np_hyper["hidden"]),
                   num_steps, lr, seed)
    gauss = stats.multivariate_normal(train.mean(0), np.cov(train.T, bias=True))
    test_loglik = fit.log_prob(test)
    # The mean is reported as is, with the median and the worst point beside it: a held-out
    # point between the moons can land far in the base's tail (the coupling scales reach
    # e^3 per layer), and one such point can dominate the mean.
    return Fit(posterior={}, diagnostics={
        "loglik_trace": fit.loglik_trace,
        "loglik_per_point": float(np.mean(fit.log_prob(train))),
        "test_loglik_per_point": float(np.mean(test_loglik)),
        "test_loglik_median": float(np.median(test_loglik)),
        "test_loglik_worst": float(np.min(test_loglik)),
        "gaussian_test_loglik_per_point": float(np.mean(gauss.logpdf(test))),
        "gaussian_test_loglik_median": float(np.median(gauss.logpdf(test))),
        "steps": num_steps, "train_points": len(train), "test_points": len(test)}, kind="point")


MLE = Backend(
    name="mle",
    fit=_fit_mle,
    options={"num_samples": 1, "num_chains": 1, "num_steps": 800, "lr": 5e-3, "holdout": 0.25,
             "progress": None},
    summary="maximum likelihood for the flow's weights (Adam, eq 3.9); held-out log-likelihood "
            "against a Gaussian",
    quick={"num_steps": 20},
)


def _check(data: dict, hyper: dict) -> None:
    """The flow is built for 2-D points."""
    d = np.shape(data["x"])[-1]
    if d != 2:
        raise ZooError(f"model 'realnvp_flow': data key x must have D=2 columns (points in the plane), got D={d}")


_NO_LATENTS = ("realnvp_flow has no latent sites: it is a density model whose weights are fitted "
               "by maximum likelihood (back-end mle)")

SPEC = ModelSpec(
    name="realnvp_flow",
    model=model,
    data={"x": DataKey(("N", "D"), support=constraints.real)},
    latent_sites=(),
    hyper={"num_layers": Hyper(4, constraints.positive_integer),
           "hidden": Hyper(16, constraints.positive_integer)},
    sizes={"N": 500},
    seed_section="004 3.6 (normalizing flows, affine coupling, eqs 3.4 to 3.9)",
    example={"x": two_moons()},
    check=_check,
    backends=Backends(
        default=("mle",),
        own={"mle": MLE},
        limits={b: _NO_LATENTS for b in ("exact", "nuts", "hmc", "svi", "importance", "enum")},
    ),
)


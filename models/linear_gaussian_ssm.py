"""A linear-Gaussian state-space model: the Kalman filter, RTS smoother and FFBS as its exact posterior.

The notes' continuous SSM x'(t) = A x(t) + B u(t), y(t) = C x(t) + D u(t) (004 1.4, eq 1.2),
discretised in time and with Gaussian noise on the state and on the output. The latent
state path ``x`` (T, dx) is one sample site whose prior is the Markov chain of the
recursion (`LinearGaussianMarkov`, O(T) density), so every generic back-end sees the
whole path. The posterior of the path given ``y`` is jointly Gaussian: the Kalman filter
gives the exact log evidence, the Rauch-Tung-Striebel smoother its marginal means and
covariances, and forward-filtering backward-sampling (FFBS) joint draws and the joint log
density.

Inputs ``u`` are optional. Without them the terms ``B u_t`` and ``D u_t`` vanish (missing
``u`` means ``u = 0``); the defaults ``B`` (dx, 1) and ``D`` (dy, 1) are zero, so ``du = 1``
and an input given without changing ``B`` and ``D`` has no effect until they are set. Given
``A, C, Q, R, m0, P0`` of any sizes and no ``u`` (and zero or default ``B``, ``D``), it is a
model without controls: ``B`` and ``D`` are not checked against ``dx`` and ``dy``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from scipy import linalg
from torch.distributions import constraints

from zoo.core.errors import ZooError
from zoo.core.spec import (
    Backends,
    DataKey,
    ExactPosterior,
    Hyper,
    ModelSpec,
    Reference,
    Scoring,
    gaussian_marginals,
)
from zoo.inference.svi import JIT_ELBO

NAME = "linear_gaussian_ssm"

# Defaults: a damped rotation (radius 0.949, about 0.2 rad a step) observed in both
# coordinates with noise. Observing only the first coordinate (C = [[1, 0]], R = [[0.5]])
# leaves the second known through the dynamics alone; the posterior of the path is then ten
# times worse conditioned (correlation matrix condition number 114 against 10.5 at T = 50)
# and NUTS needs several times more leapfrog steps per draw.
_A = [[0.93, -0.19], [0.19, 0.93]]
_B = [[0.0], [0.0]]
_C = [[1.0, 0.0], [0.0, 1.0]]
_D = [[0.0], [0.0]]
_Q = [[0.2, 0.0], [0.0, 0.2]]
_R = [[0.5, 0.0], [0.0, 0.5]]
_M0 = [0.0, 0.0]
_P0 = [[1.0, 0.0], [0.0, 1.0]]

_LOG_2PI = math.log(2 * math.pi)


def _tensor(value, like: torch.Tensor | None = None) -> torch.Tensor:
    """``value`` as a float64 tensor (or in the dtype of ``like``)."""
    dtype = like.dtype if like is not None else torch.float64
    return torch.as_tensor(value, dtype=dtype)


def _mvn_log_prob(r: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """log N(r; 0, L L^T) over the last dimension, broadcasting ``r`` against ``scale_tril``."""
    L = scale_tril.expand(torch.broadcast_shapes(r.shape[:-1], scale_tril.shape[:-2]) + scale_tril.shape[-2:])
    z = torch.linalg.solve_triangular(L, r.unsqueeze(-1), upper=False).squeeze(-1)
    half_log_det = torch.diagonal(scale_tril, dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * (z ** 2).sum(-1) - half_log_det - 0.5 * r.shape[-1] * _LOG_2PI


class LinearGaussianMarkov(TorchDistribution):
    """The prior of a state path x_1..x_T under x_t = A x_{t-1} + b_t + N(0, Q).

    x_0 ~ N(m0, P0) is integrated out, so x_1 ~ N(A m0 + b_1, A P0 A^T + Q). The event is
    the whole path, shape (T, dx); ``log_prob`` sums the T transition densities (O(T)) and
    ``rsample`` runs the recursion, so the site works with NUTS (real support) and
    reparameterised SVI, and under an outer plate of draws (any batch shape).

    Parameters
    ----------
    A : (..., dx, dx) transition matrix.
    offset : (..., T, dx) the known drift b_t (``B u_t``; zeros without inputs).
    Q : (..., dx, dx) state noise covariance.
    m0 : (..., dx) mean of x_0.
    P0 : (..., dx, dx) covariance of x_0.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, A: torch.Tensor, offset: torch.Tensor, Q: torch.Tensor, m0: torch.Tensor,
                 P0: torch.Tensor, validate_args: bool | None = None) -> None:
        batch_shape = torch.broadcast_shapes(A.shape[:-2], offset.shape[:-2], Q.shape[:-2],
                                             m0.shape[:-1], P0.shape[:-2])
        T, dx = offset.shape[-2:]
        self.A = A.expand(batch_shape + (dx, dx))
        self.offset = offset.expand(batch_shape + (T, dx))
        self.Q = Q.expand(batch_shape + (dx, dx))
        self.m0 = m0.expand(batch_shape + (dx,))
        self.P0 = P0.expand(batch_shape + (dx, dx))
        At = self.A.transpose(-1, -2)
        self._loc1 = (self.A @ self.m0.unsqueeze(-1)).squeeze(-1) + self.offset[..., 0, :]
        self._tril1 = torch.linalg.cholesky(self.A @ self.P0 @ At + self.Q)
        self._tril_q = torch.linalg.cholesky(self.Q)
        super().__init__(batch_shape, torch.Size((T, dx)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> LinearGaussianMarkov:
        batch_shape = torch.Size(batch_shape)
        T, dx = self.event_shape
        return LinearGaussianMarkov(self.A.expand(batch_shape + (dx, dx)),
                                    self.offset.expand(batch_shape + (T, dx)),
                                    self.Q.expand(batch_shape + (dx, dx)),
                                    self.m0.expand(batch_shape + (dx,)),
                                    self.P0.expand(batch_shape + (dx, dx)),
                                    validate_args=False)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.A.dtype, device=self.A.device)
        x = self._loc1 + (self._tril1 @ eps[..., 0, :].unsqueeze(-1)).squeeze(-1)
        path = [x]
        for t in range(1, shape[-2]):
            x = ((self.A @ x.unsqueeze(-1)) + self._tril_q @ eps[..., t, :].unsqueeze(-1)).squeeze(-1) \
                + self.offset[..., t, :]
            path.append(x)
        return torch.stack(path, dim=-2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        first = _mvn_log_prob(value[..., 0, :] - self._loc1, self._tril1)
        pred = value[..., :-1, :] @ self.A.transpose(-1, -2)  # rows A x_{t-1}, t = 2..T
        rest = value[..., 1:, :] - pred - self.offset[..., 1:, :]
        return first + _mvn_log_prob(rest, self._tril_q.unsqueeze(-3)).sum(-1)


def _drift(u, M: torch.Tensor, T: int, rows: int) -> torch.Tensor:
    """``M u_t`` stacked over time, shape (T, rows); zeros when ``u`` is None."""
    if u is None:
        return torch.zeros((T, rows), dtype=M.dtype)
    return _tensor(u, M) @ M.transpose(-1, -2)


def model(y=None, u=None, T=None, A=_A, B=_B, C=_C, D=_D, Q=_Q, R=_R, m0=_M0, P0=_P0):
    """A discretised linear-Gaussian state-space model (seed 004 1.4, eq 1.2: x' = Ax + Bu,
    y = Cx + Du), with Gaussian noise on the state and on the output.

    Generative story::

        x_0 ~ MVN(m0, P0)                               # integrated out, not a site
        x_t | x_{t-1} ~ MVN(A x_{t-1} + B u_t, Q)       # t = 1..T, the latent path x (T, dx)
        y_t | x_t ~ MVN(C x_t + D u_t, R)               # t = 1..T, observed y (T, dy)

    so x_1 ~ MVN(A m0 + B u_1, A P0 A^T + Q). ``u`` (T, du) is an optional known input;
    without it the ``B u`` and ``D u`` terms are zero. The latent site ``x`` holds the whole
    path x_1..x_T as one event (`LinearGaussianMarkov`); ``y`` is pointwise in time (plate
    ``time``). The exact posterior of ``x`` is Gaussian: Kalman filter (log evidence),
    RTS smoother (marginals) and forward-filtering backward-sampling (joint draws).
    """
    A, B, C, D, Q, R, m0, P0 = (_tensor(v) for v in (A, B, C, D, Q, R, m0, P0))
    if y is not None:
        T = y.shape[0]
    elif u is not None:
        T = len(u)
    T = int(T)
    dx, dy = A.shape[-1], C.shape[-2]
    prior = LinearGaussianMarkov(A, _drift(u, B, T, dx), Q, m0, P0)
    x = pyro.sample("x", prior)
    # x is outside the time plate, so under outer plates its batch shape ends in a 1 at the
    # time plate's dim (-1): drop it so that x's time axis lines up with that plate.
    path = x.squeeze(-3) if x.dim() > 2 else x
    loc = path @ C.transpose(-1, -2) + _drift(u, D, T, dy)
    with pyro.plate("time", T, dim=-1):
        pyro.sample("y", dist.MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(R)), obs=y)


# ---------------------------------------------------------------------------------------
# Exact inference in numpy


@dataclass(frozen=True)
class Filtered:
    """What the Kalman filter returns; index t = 0..T-1 stands for time step t + 1.

    Attributes
    ----------
    predicted_means, predicted_covs : moments of p(x_t | y_1..y_{t-1}), (T, dx), (T, dx, dx).
    filtered_means, filtered_covs : moments of p(x_t | y_1..y_t), (T, dx), (T, dx, dx).
    log_evidence : log p(y_1..y_T), the sum of the innovations' log densities.
    step_log_evidence : (T,) log p(y_t | y_1..y_{t-1}).
    """

    predicted_means: np.ndarray
    predicted_covs: np.ndarray
    filtered_means: np.ndarray
    filtered_covs: np.ndarray
    log_evidence: float
    step_log_evidence: np.ndarray


@dataclass(frozen=True)
class Smoothed:
    """What the RTS smoother returns: moments of p(x_t | y_1..y_T) and the smoother gains.

    ``gains[t]`` = P_{t|t} A^T P_{t+1|t}^-1 (t = 0..T-2), also used by `ffbs`.
    """

    means: np.ndarray
    covs: np.ndarray
    gains: np.ndarray


def _inputs(T: int, u: np.ndarray | None, B: np.ndarray, D: np.ndarray, dx: int,
            dy: int) -> tuple[np.ndarray, np.ndarray]:
    """(B u_t, D u_t) stacked over time, (T, dx) and (T, dy); zeros without ``u``."""
    if u is None:
        return np.zeros((T, dx)), np.zeros((T, dy))
    u = np.asarray(u, dtype=float)
    return u @ B.T, u @ D.T


def _sym(M: np.ndarray) -> np.ndarray:
    return 0.5 * (M + np.swapaxes(M, -1, -2))


def kalman_filter(y: np.ndarray, A: np.ndarray, C: np.ndarray, Q: np.ndarray, R: np.ndarray,
                  m0: np.ndarray, P0: np.ndarray, B: np.ndarray | None = None,
                  D: np.ndarray | None = None, u: np.ndarray | None = None) -> Filtered:
    """The Kalman filter for x_t = A x_{t-1} + B u_t + N(0, Q), y_t = C x_t + D u_t + N(0, R).

    Parameters
    ----------
    y : (T, dy) observations.
    A, C, Q, R : (dx, dx), (dy, dx), (dx, dx), (dy, dy) matrices.
    m0, P0 : mean (dx,) and covariance (dx, dx) of x_0 (one step before y_1).
    B, D, u : optional inputs: (dx, du), (dy, du), (T, du); missing ones count as zero.

    Returns
    -------
    Filtered
        predicted and filtered moments, and the exact log evidence log p(y).
    """
    y = np.asarray(y, dtype=float)
    A, C, Q, R = (np.asarray(M, dtype=float) for M in (A, C, Q, R))
    T, dy = y.shape
    dx = A.shape[0]
    B = np.zeros((dx, 1)) if B is None else np.asarray(B, dtype=float)
    D = np.zeros((dy, 1)) if D is None else np.asarray(D, dtype=float)
    bu, du = _inputs(T, u, B, D, dx, dy)
    m, P = np.asarray(m0, dtype=float), np.asarray(P0, dtype=float)
    pm, pP = np.empty((T, dx)), np.empty((T, dx, dx))
    fm, fP = np.empty((T, dx)), np.empty((T, dx, dx))
    steps = np.empty(T)
    eye = np.eye(dx)
    for t in range(T):
        m = A @ m + bu[t]
        P = _sym(A @ P @ A.T + Q)
        pm[t], pP[t] = m, P
        v = y[t] - C @ m - du[t]
        S = _sym(C @ P @ C.T + R)
        cho = linalg.cho_factor(S, lower=True)
        K = linalg.cho_solve(cho, C @ P).T  # P C^T S^-1
        steps[t] = -0.5 * (v @ linalg.cho_solve(cho, v) + 2 * np.log(np.diag(cho[0])).sum()
                           + dy * _LOG_2PI)
        m = m + K @ v
        IKC = eye - K @ C
        P = _sym(IKC @ P @ IKC.T + K @ R @ K.T)  # Joseph form: stays symmetric PD
        fm[t], fP[t] = m, P
    return Filtered(pm, pP, fm, fP, float(steps.sum()), steps)


def rts_smoother(filtered: Filtered, A: np.ndarray) -> Smoothed:
    """The Rauch-Tung-Striebel smoother: moments of p(x_t | y_1..y_T) from the filter's output.

    Parameters
    ----------
    filtered : the output of `kalman_filter`.
    A : (dx, dx) the transition matrix the filter used.
    """
    A = np.asarray(A, dtype=float)
    fm, fP = filtered.filtered_means, filtered.filtered_covs
    pm, pP = filtered.predicted_means, filtered.predicted_covs
    T, dx = fm.shape
    means, covs = fm.copy(), fP.copy()
    gains = np.empty((max(T - 1, 0), dx, dx))
    for t in range(T - 2, -1, -1):
        G = linalg.solve(pP[t + 1], A @ fP[t], assume_a="pos").T  # P_t|t A^T P_t+1|t^-1
        gains[t] = G
        means[t] = fm[t] + G @ (means[t + 1] - pm[t + 1])
        covs[t] = _sym(fP[t] + G @ (covs[t + 1] - pP[t + 1]) @ G.T)
    return Smoothed(means, covs, gains)


def _backward_conditionals(filtered: Filtered, gains: np.ndarray) -> np.ndarray:
    """Cholesky factors of Cov(x_t | x_{t+1}, y_1..y_t) = P_t|t - G_t P_t+1|t G_t^T, (T-1, dx, dx)."""
    covs = filtered.filtered_covs[:-1] - gains @ filtered.predicted_covs[1:] @ np.swapaxes(gains, -1, -2)
    return np.linalg.cholesky(_sym(covs))


def ffbs(rng: np.random.Generator, filtered: Filtered, smoothed: Smoothed, n: int) -> np.ndarray:
    """Forward-filtering backward-sampling: ``n`` joint draws of x_1..x_T given y, (n, T, dx).

    x_T ~ N(m_T|T, P_T|T), then x_t | x_{t+1} ~ N(m_t|t + G_t (x_{t+1} - m_t+1|t),
    P_t|t - G_t P_t+1|t G_t^T) for t = T-1 down to 1.
    """
    fm, fP, pm = filtered.filtered_means, filtered.filtered_covs, filtered.predicted_means
    T, dx = fm.shape
    tril = _backward_conditionals(filtered, smoothed.gains)
    out = np.empty((n, T, dx))
    out[:, -1] = fm[-1] + rng.standard_normal((n, dx)) @ np.linalg.cholesky(fP[-1]).T
    for t in range(T - 2, -1, -1):
        mean = fm[t] + (out[:, t + 1] - pm[t + 1]) @ smoothed.gains[t].T
        out[:, t] = mean + rng.standard_normal((n, dx)) @ tril[t].T
    return out


def _np_mvn_logpdf(r: np.ndarray, tril: np.ndarray) -> np.ndarray:
    """log N(r; 0, L L^T) over the last axis; ``tril`` broadcasts against ``r``'s leading axes."""
    z = np.linalg.solve(tril, r[..., None])[..., 0]
    return (-0.5 * np.sum(z ** 2, -1) - np.log(np.diagonal(tril, axis1=-2, axis2=-1)).sum(-1)
            - 0.5 * r.shape[-1] * _LOG_2PI)


def posterior_log_prob(x: np.ndarray, filtered: Filtered, smoothed: Smoothed) -> np.ndarray:
    """log p(x_1..x_T | y) of paths ``x`` (..., T, dx): the FFBS factorisation's densities."""
    x = np.asarray(x, dtype=float)
    fm, fP, pm = filtered.filtered_means, filtered.filtered_covs, filtered.predicted_means
    total = _np_mvn_logpdf(x[..., -1, :] - fm[-1], np.linalg.cholesky(fP[-1]))
    if x.shape[-2] > 1:
        mean = fm[:-1] + np.einsum("tij,...tj->...ti", smoothed.gains, x[..., 1:, :] - pm[1:])
        tril = _backward_conditionals(filtered, smoothed.gains)
        total = total + _np_mvn_logpdf(x[..., :-1, :] - mean, tril).sum(-1)
    return total


def _matrices(hyper: dict) -> dict[str, np.ndarray]:
    return {k: np.atleast_1d(np.asarray(hyper[k], dtype=float)) for k in ("A", "B", "C", "D", "Q", "R", "m0", "P0")}


def exact(data: dict, hyper: dict) -> ExactPosterior:
    """The exact Gaussian posterior of the path ``x`` given ``y`` (and ``u``).

    Marginal means and sds come from the RTS smoother, joint draws from FFBS, the joint log
    density from the same backward factorisation, and the log evidence from the Kalman
    filter's innovations. ``extra`` holds the filter's and smoother's moments.
    """
    h = _matrices(hyper)
    u = data.get("u")
    filt = kalman_filter(data["y"], h["A"], h["C"], h["Q"], h["R"], h["m0"], h["P0"],
                         h["B"], h["D"], u)
    smooth = rts_smoother(filt, h["A"])
    sd = np.sqrt(np.diagonal(smooth.covs, axis1=-2, axis2=-1))

    def sample(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"x": ffbs(rng, filt, smooth, n)}

    def log_prob(values: dict[str, np.ndarray]) -> float:
        return float(posterior_log_prob(values["x"], filt, smooth))

    return ExactPosterior(
        mean={"x": smooth.means},
        sd={"x": sd},
        sample=sample,
        log_prob=log_prob,
        log_evidence=filt.log_evidence,
        extra={"filtered_means": filt.filtered_means, "filtered_covs": filt.filtered_covs,
               "predicted_means": filt.predicted_means, "predicted_covs": filt.predicted_covs,
               "smoothed_covs": smooth.covs, "smoother_gains": smooth.gains,
               "step_log_evidence": filt.step_log_evidence},
        marginal=gaussian_marginals({"x": smooth.means}, {"x": sd}),
    )


# ---------------------------------------------------------------------------------------
# Validation, simulation inputs and the spec


def check(data: dict, hyper: dict) -> None:
    """Shapes agree (A square, dx, dy, du consistent across the matrices and data) and T >= 2."""
    h = _matrices(hyper)
    where = f"model {NAME!r}: "

    def fail(msg: str) -> None:
        raise ZooError(where + msg)

    A = h["A"]
    if A.shape[0] != A.shape[1]:
        fail(f"hyperparameter A must be square (dx, dx), got shape {A.shape}")
    dx = A.shape[0]
    dy = h["C"].shape[0]
    du = h["B"].shape[1]
    expected = {"Q": (dx, dx), "P0": (dx, dx), "m0": (dx,), "C": (dy, dx), "R": (dy, dy)}
    if data.get("u") is not None or np.any(h["B"]) or np.any(h["D"]):  # else: no controls at all
        expected.update(B=(dx, du), D=(dy, du))
    for k, shape in expected.items():
        if h[k].shape != shape:
            fail(f"hyperparameter {k} must have shape {shape} (dx={dx} from A, dy={dy} from C, "
                 f"du={du} from B), got shape {h[k].shape}")
    y = np.asarray(data["y"])
    if y.shape[1] != dy:
        fail(f"data key y has dy={y.shape[1]} columns (shape {y.shape}), but hyperparameter C "
             f"has shape {h['C'].shape} (dy={dy})")
    if y.shape[0] < 2:
        fail(f"data key y has T={y.shape[0]} time step(s) (T < 2); the state-space model needs T >= 2")
    u = data.get("u")
    if u is not None:
        u = np.asarray(u)
        if u.shape[1] != du:
            fail(f"data key u has du={u.shape[1]} columns (shape {u.shape}), but hyperparameter B "
                 f"has shape {h['B'].shape} and D {h['D'].shape} (du={du}); set B and D for this input")


def inputs(rng: np.random.Generator, sizes: dict, hyper: dict) -> dict:
    """A standard-normal input ``u`` (T, du) when B or D is non-zero; no input otherwise."""
    B, D = np.asarray(hyper["B"], dtype=float), np.asarray(hyper["D"], dtype=float)
    if not (np.any(B) or np.any(D)):
        return {}
    return {"u": rng.standard_normal((sizes["T"], B.shape[1]))}


def diagnose(problem: Any, posterior: dict[str, np.ndarray], truth: dict | None) -> dict[str, Any]:
    """Scores of a back-end's path against the simulated truth (empty when the truth is unknown).

    ``rmse_truth``: root mean square error of the posterior mean path against the true ``x``
    (the exact posterior's own value is the floor a back-end can reach on these data);
    ``coverage_90``: the share of true scalars inside the central 90% posterior intervals
    (near 0.9 for a calibrated posterior, with T * dx scalars behind it).
    """
    if not truth or "x" not in truth:
        return {}
    draws = np.asarray(posterior["x"], dtype=float)
    draws = draws.reshape((-1,) + draws.shape[2:])
    true = np.asarray(truth["x"], dtype=float)
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    return {"rmse_truth": float(np.sqrt(np.mean((draws.mean(0) - true) ** 2))),
            "coverage_90": float(np.mean((true >= lo) & (true <= hi)))}


SPEC = ModelSpec(
    name=NAME,
    model=model,
    data={
        "y": DataKey(("T", "dy"), support=constraints.real),
        "u": DataKey(("T", "du"), observed=False, optional=True, support=constraints.real),
    },
    latent_sites=("x",),
    dims={"x": ("T", "dx")},
    hyper={
        "A": Hyper(_A, constraints.real),
        "B": Hyper(_B, constraints.real),
        "C": Hyper(_C, constraints.real),
        "D": Hyper(_D, constraints.real),
        "Q": Hyper(_Q, constraints.positive_definite),
        "R": Hyper(_R, constraints.positive_definite),
        "m0": Hyper(_M0, constraints.real),
        "P0": Hyper(_P0, constraints.positive_definite),
    },
    sizes={"T": 50},
    seed_section="004 1.4 (State-Space model, eq 1.2: x' = Ax + Bu, y = Cx + Du), discretised",
    inputs=inputs,
    check=check,
    reference=Reference(
        exact=exact,
    ),
    scoring=Scoring(
        diagnose=diagnose,
    ),
    backends=Backends(
        default=("exact",),
        options=JIT_ELBO,
    ),
)

"""A Dirichlet-process mixture of Gaussians, truncated stick-breaking, and the notes' Gibbs sampler.

The Dirichlet process DP(alpha, H) (seed 004 2.3.1) is written by stick-breaking (eq 2.1):
sticks V_k ~ Beta(1, alpha) and weights pi_k = V_k prod_{j<k} (1 - V_j). The model keeps the
first T components (truncation, Ishwaran & James 2001): the last weight takes the rest of the
stick, so the T weights sum to one. Integrating the random measure out gives the Polya urn
(Chinese restaurant) of eq 2.10-2.11, `polya_urn`. The ``gibbs`` back-end is the blocked Gibbs
sampler of the truncated process (004 2.3.4: assignments from their multinomial conditional,
eq 2.12, and cluster parameters from their conjugate conditional, eq 2.13; sticks from their
Beta conditional), run for several chains at once in numpy. The notes' eq 2.12 is the
collapsed (Polya urn) form, where the weights are integrated out and a new cluster is opened
with probability prop. to alpha times the prior predictive; the blocked form keeps the T
weights instead, so an empty component plays the new cluster and a sweep is vectorised over
points. Both leave the same posterior invariant (up to truncation); the tests check the
sampler against the posterior enumerated exactly on a small data set.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch.distributions import constraints
from tqdm.auto import tqdm

from zoo.core.errors import ZooError
from zoo.core.spec import Backend, Backends, DataKey, Fit, Hyper, ModelSpec, Scoring
from zoo.inference.svi import JIT_ELBO_ENUM

NAME = "dp_mixture"
STICK_EPS = 1e-12  # sticks are kept in [eps, 1 - eps] so every log density stays finite


def stick_breaking(sticks: Any) -> Any:
    """Mixture weights from stick-breaking fractions (notes 004 eq 2.1), truncated.

    ``w_k = V_k prod_{j<k} (1 - V_j)`` for k < T-1 and ``w_{T-1} = prod_{j<T-1} (1 - V_j)``
    (the rest of the stick), so the T weights sum to one.

    Parameters
    ----------
    sticks : array or tensor of shape (..., T-1) with entries in (0, 1).

    Returns
    -------
    weights of shape (..., T), a torch tensor for a tensor input, else a numpy array.
    """
    if isinstance(sticks, torch.Tensor):
        one = torch.ones_like(sticks[..., :1])
        rest = torch.cumprod(1 - sticks, dim=-1)
        return torch.cat([sticks, one], dim=-1) * torch.cat([one, rest], dim=-1)
    v = np.asarray(sticks, dtype=float)
    one = np.ones(v.shape[:-1] + (1,))
    rest = np.cumprod(1 - v, axis=-1)
    return np.concatenate([v, one], axis=-1) * np.concatenate([one, rest], axis=-1)


def sticks_from_weights(weights: np.ndarray) -> np.ndarray:
    """The inverse of `stick_breaking`: ``V_k = w_k / (1 - sum_{j<k} w_j)``, shape (..., T-1)."""
    w = np.asarray(weights, dtype=float)
    left = 1 - np.cumsum(w, axis=-1) + w  # stick left before breaking piece k
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(left > 0, w / np.where(left > 0, left, 1.0), 1.0)
    return np.clip(v[..., :-1], STICK_EPS, 1 - STICK_EPS)


def polya_urn(alpha: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster labels of ``n`` draws from the Polya urn / Chinese restaurant (notes 004 eq 2.10).

    Draw i (0-based) opens a new cluster with probability alpha / (alpha + i) and otherwise
    joins cluster h with probability n_h / (alpha + i). The number of clusters therefore has
    expectation sum_{i<n} alpha / (alpha + i).

    Parameters
    ----------
    alpha : concentration, > 0.
    n : number of draws.
    rng : numpy random generator.

    Returns
    -------
    labels : int array (n,), clusters numbered 0, 1, ... in order of appearance.
    """
    if not alpha > 0:
        raise ZooError(f"model {NAME!r}: polya_urn needs alpha > 0, got {alpha!r}")
    labels = np.empty(int(n), dtype=np.int64)
    counts: list[int] = []
    u = rng.random(int(n))
    for i in range(int(n)):
        if u[i] * (alpha + i) < alpha:
            labels[i] = len(counts)
            counts.append(1)
        else:  # join cluster h with probability n_h / i among the i earlier draws
            h = int(np.searchsorted(np.cumsum(counts), (u[i] * (alpha + i) - alpha), side="right"))
            labels[i] = h
            counts[h] += 1
    return labels


def expected_clusters(alpha: float, n: int) -> float:
    """E[number of clusters] among ``n`` Polya urn draws: sum_{i<n} alpha / (alpha + i)."""
    return float(np.sum(alpha / (alpha + np.arange(int(n)))))


def model(x=None, N=None, D=None, T=10, alpha=1.0, mu0=0.0, sigma0=10.0, sigma=1.0):
    """A Dirichlet-process mixture of Gaussians, truncated at T components (seed 004 2.3:
    stick-breaking eq 2.1, DP mixture eqs 2.8-2.9, Gibbs sampling 2.3.4).

    Generative story::

        V_k ~ Beta(1, alpha)                          # k = 1..T-1, "sticks"
        pi = stick_breaking(V)                        # pi_k = V_k prod_{j<k} (1 - V_j); pi_T the rest
        theta_k ~ Normal(mu0, sigma0^2 I_D)           # k = 1..T, "locs" (T, D): draws from H
        S_i | pi ~ Categorical(pi)                    # i = 1..N, "assignment"
        x_i | S_i, theta ~ Normal(theta_{S_i}, sigma^2 I_D)   # x (N, D), sigma known

    The data ``x`` are (N, D), or (N,) for one dimension (read as (N, 1)). The truncation T bounds the number of clusters;
    the concentration alpha sets how many are used: under the prior, N points occupy on average
    sum_{i<N} alpha / (alpha + i) clusters (the Polya urn, eq 2.10; `polya_urn`). The assignment
    is a local discrete site, enumerated by back-ends that marginalise it. The component labels
    are arbitrary (label switching); `relabel` matches them to a pivot clustering and orders
    them by their first loc coordinate. An unoccupied component's loc is a draw from the prior H.
    """
    T = int(T)
    x = None if x is None else points(x)
    alpha, mu0, sigma0, sigma = (torch.as_tensor(v, dtype=torch.float64) for v in (alpha, mu0, sigma0, sigma))
    sticks = pyro.sample("sticks", dist.Beta(torch.ones_like(alpha), alpha).expand([T - 1]).to_event(1))
    d = int(D) if x is None else x.shape[-1]
    locs = pyro.sample("locs", dist.Normal(mu0, sigma0).expand([T, d]).to_event(2))
    weights = stick_breaking(sticks)
    with pyro.plate("data", N if x is None else x.shape[0], dim=-1):
        assignment = pyro.sample("assignment", dist.Categorical(weights),
                                 infer={"enumerate": "parallel"})
        # Vindex: locs (S, 1, T, D) under an outer plate of S draws, assignment (S, N) or
        # enumerated (T, 1, 1): the result broadcasts to (..., N, D).
        loc = Vindex(locs)[..., assignment, :]
        pyro.sample("x", dist.Normal(loc, sigma).to_event(1), obs=x)


def points(x: Any) -> Any:
    """The data as (N, D) points: a 1-D ``x`` (N,) is N points in one dimension (a view)."""
    return x.reshape(x.shape[0], -1)


def check(data: dict, hyper: dict) -> None:
    """T is an integer >= 2 (one stick at least); the generic checks cover alpha, NaN, shapes."""
    T = hyper["T"]
    if T < 2 or T != int(T):
        raise ZooError(f"model {NAME!r}: hyperparameter T (truncation) must be an integer >= 2, got {T!r}")


# ----------------------------------------------------------------------------------------
# Blocked Gibbs sampler (numpy, all chains at once)


def log_joint(x: np.ndarray, sticks: np.ndarray, locs: np.ndarray, assignment: np.ndarray,
              alpha: float, mu0: float, sigma0: float, sigma: float) -> np.ndarray:
    """log p(x, assignment, sticks, locs) of the model, for a batch of states.

    Parameters
    ----------
    x : (N, D) data.
    sticks : (..., T-1); locs : (..., T, D); assignment : (..., N) ints.

    Returns
    -------
    (...,) array.
    """
    t1, (n, d) = sticks.shape[-1], x.shape
    lp = t1 * np.log(alpha) + (alpha - 1) * np.sum(np.log1p(-sticks), axis=-1)  # Beta(1, alpha)
    lp = lp - np.sum((locs - mu0) ** 2, axis=(-2, -1)) / (2 * sigma0**2) \
        - (t1 + 1) * d * np.log(sigma0 * np.sqrt(2 * np.pi))
    logw = np.log(stick_breaking(sticks))
    lp = lp + np.sum(np.take_along_axis(logw, assignment, axis=-1), axis=-1)
    centre = np.take_along_axis(locs, assignment[..., None], axis=-2)  # (..., N, D)
    return lp - np.sum((x - centre) ** 2, axis=(-2, -1)) / (2 * sigma**2) - n * d * np.log(sigma * np.sqrt(2 * np.pi))


def _gibbs_sweep(rng: np.random.Generator, x: np.ndarray, sticks: np.ndarray, locs: np.ndarray,
                 alpha: float, mu0: float, sigma0: float, sigma: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One blocked Gibbs sweep for C chains: assignment | sticks, locs; sticks | assignment;
    locs | assignment, x. Shapes: sticks (C, T-1), locs (C, T, D)."""
    T = locs.shape[1]
    # 1. assignments: P(S_i = k | -) prop. to pi_k N(x_i | theta_k, sigma^2 I)   (eq 2.12)
    cross = x @ locs.transpose(0, 2, 1)  # (C, N, T); the |x_i|^2 term is the same for every k
    logits = np.log(stick_breaking(sticks))[:, None, :] + (cross - 0.5 * np.sum(locs**2, -1)[:, None, :]) / sigma**2
    p = np.exp(logits - logits.max(-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(cdf.shape[:-1] + (1,)) * cdf[..., -1:]
    assignment = np.minimum(np.sum(cdf < u, axis=-1), T - 1)  # (C, N)
    sticks, locs = _sticks_locs(rng, x, assignment, T, alpha, mu0, sigma0, sigma)
    return sticks, locs, assignment


def _sticks_locs(rng: np.random.Generator, x: np.ndarray, assignment: np.ndarray, T: int,
                 alpha: float, mu0: float, sigma0: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Sticks and locs from their conditionals given the assignments (C, N)."""
    onehot = assignment[..., None] == np.arange(T)  # (C, N, T)
    counts = onehot.sum(1).astype(float)  # (C, T)
    # 2. sticks: V_k | - ~ Beta(1 + n_k, alpha + sum_{j>k} n_j)
    later = counts[:, ::-1].cumsum(1)[:, ::-1] - counts  # n_{>k}
    sticks = np.clip(rng.beta(1 + counts[:, :-1], alpha + later[:, :-1]), STICK_EPS, 1 - STICK_EPS)
    # 3. locs: conjugate Normal per component and dimension   (eq 2.13)
    prec = 1 / sigma0**2 + counts / sigma**2  # (C, T)
    sums = np.einsum("cnt,nd->ctd", onehot.astype(float), x)
    mean = (mu0 / sigma0**2 + sums / sigma**2) / prec[..., None]
    locs = mean + rng.standard_normal(mean.shape) / np.sqrt(prec)[..., None]
    return sticks, locs


def gibbs(x: np.ndarray, *, T: int, alpha: float, mu0: float, sigma0: float, sigma: float,
          num_samples: int = 1000, num_warmup: int = 500, num_chains: int = 4, seed: int = 0,
          progress: bool | None = None) -> dict[str, Any]:
    """Blocked Gibbs sampler of the truncated DP mixture (notes 004 2.3.4; Ishwaran & James 2001).

    Each sweep draws every assignment from its multinomial conditional given the weights and
    locs (eq 2.12, the truncated form: an empty component plays the role of the "new cluster"
    with its loc drawn from H), the sticks from Beta(1 + n_k, alpha + n_{>k}), and each loc from
    its conjugate Normal conditional given the points assigned to it (eq 2.13). The
    concentration alpha is fixed, as in the notes. Each chain starts from sticks drawn from the
    prior and locs at T distinct data points chosen at random (like k-means++ seeding), so
    separated groups each get a component from the first sweep.

    Returns
    -------
    dict with ``sticks`` (C, S, T-1), ``locs`` (C, S, T, D), ``assignment`` (C, S, N) and
    ``log_joint_trace`` (C, num_warmup + num_samples + 1): log p(x, S, V, theta) at the start
    and after every sweep.
    """
    rng = np.random.default_rng(seed)
    n, _ = x.shape
    C = num_chains
    assignment = np.zeros((C, n), dtype=np.int64)  # every point in one cluster
    sticks, locs = _sticks_locs(rng, x, assignment, T, alpha, mu0, sigma0, sigma)
    trace = [log_joint(x, sticks, locs, assignment, alpha, mu0, sigma0, sigma)]
    out = {"sticks": [], "locs": [], "assignment": []}
    for it in tqdm(range(num_warmup + num_samples), desc="gibbs", disable=not progress):
        sticks, locs, assignment = _gibbs_sweep(rng, x, sticks, locs, alpha, mu0, sigma0, sigma)
        trace.append(log_joint(x, sticks, locs, assignment, alpha, mu0, sigma0, sigma))
        if it >= num_warmup:
            out["sticks"].append(sticks)
            out["locs"].append(locs)
            out["assignment"].append(assignment)
    result: dict[str, Any] = {k: np.stack(v, axis=1) for k, v in out.items()}
    result["log_joint_trace"] = np.stack(trace, axis=1)
    return result


def _fit_gibbs(problem, *, seed: int, num_samples: int, num_warmup: int, num_chains: int,
               progress: bool | None = None) -> Fit:
    h = problem.np_hyper
    draws = gibbs(points(problem.np_data["x"]), T=int(h["T"]), alpha=h["alpha"], mu0=h["mu0"],
                  sigma0=h["sigma0"], sigma=h["sigma"], num_samples=num_samples,
                  num_warmup=num_warmup, num_chains=num_chains, seed=seed, progress=progress)
    trace = draws.pop("log_joint_trace")
    return Fit(posterior=draws,
               diagnostics={"log_joint_trace": trace.mean(0), "log_joint_start": float(trace[:, 0].mean()),
                            "log_joint_mean": float(trace[:, num_warmup + 1:].mean()),
                            "sweeps": num_warmup + num_samples})


GIBBS = Backend(
    name="gibbs",
    fit=_fit_gibbs,
    options={"num_samples": 1000, "num_warmup": 500, "num_chains": 4, "progress": None},
    summary="blocked Gibbs sampler of the truncated stick-breaking DP mixture (notes 004 2.3.4)",
    quick={"num_samples": 20, "num_warmup": 20, "num_chains": 2},
)


# ----------------------------------------------------------------------------------------
# Label switching and diagnostics


def occupied(assignment: np.ndarray, T: int) -> np.ndarray:
    """Whether each component holds at least one point: (..., N) ints -> (..., T) bools."""
    a = np.asarray(assignment, dtype=np.int64)
    flat = a.reshape(-1, a.shape[-1])
    counts = np.zeros((flat.shape[0], T), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(flat.shape[0]), flat.shape[1]), flat.ravel()), 1)
    return (counts > 0).reshape(a.shape[:-1] + (T,))


def relabel(posterior: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Undo label switching draw by draw, against a pivot clustering.

    The pivot is `point_clustering` (the draw closest to the posterior co-clustering); its
    clusters are ranked by their first loc coordinate in that draw. In every draw each
    component is matched one-to-one to a pivot cluster so that the points they share are as
    many as possible (Hungarian algorithm, `scipy.optimize.linear_sum_assignment`). Components
    sharing points with their match take its rank; other occupied components (extra small
    clusters) follow by decreasing size, then the empty ones by decreasing weight. Weights and
    locs are permuted together, assignments remapped and the sticks recomputed from the
    permuted weights (`sticks_from_weights`), so each draw describes the same mixture.
    Without ``assignment`` in the draws, components are ordered by decreasing weight.
    """
    from scipy.optimize import linear_sum_assignment

    sticks, locs = np.asarray(posterior["sticks"], dtype=float), np.asarray(posterior["locs"], dtype=float)
    T = locs.shape[-2]
    w = stick_breaking(sticks).reshape(-1, T)
    loc = locs.reshape(-1, T, locs.shape[-1])
    out = dict(posterior)
    if "assignment" not in posterior:
        order = np.argsort(-w, axis=-1, kind="stable")
    else:
        a = np.asarray(posterior["assignment"]).astype(np.int64).reshape(w.shape[0], -1)
        pivot_index = point_clustering(a, return_index=True)
        pivot = a[pivot_index]
        used = np.unique(pivot)
        rank = np.full(T, T, dtype=float)  # pivot label -> rank by first loc coordinate
        rank[used[np.argsort(loc[pivot_index, used, 0])]] = np.arange(len(used))
        size = np.zeros((len(a), T))
        np.add.at(size, (np.repeat(np.arange(len(a)), a.shape[1]), a.ravel()), 1)
        overlap = np.zeros((len(a), T, T))  # draws x component x pivot label
        np.add.at(overlap, (np.repeat(np.arange(len(a)), a.shape[1]), a.ravel(), np.tile(pivot, len(a))), 1)
        order = np.empty((len(a), T), dtype=np.int64)
        for s_ in range(len(a)):
            comp, lab = linear_sum_assignment(-overlap[s_])
            shared = overlap[s_, comp, lab] > 0
            group = np.where(shared, 0, np.where(size[s_, comp] > 0, 1, 2))
            value = np.where(shared, rank[lab], np.where(size[s_, comp] > 0, -size[s_, comp], -w[s_, comp]))
            order[s_] = comp[np.lexsort((value, group))]
        inverse = np.argsort(order, axis=-1)  # old label -> new label
        out["assignment"] = np.take_along_axis(inverse, a, -1).reshape(np.shape(posterior["assignment"])).astype(
            np.asarray(posterior["assignment"]).dtype)
    out["sticks"] = sticks_from_weights(np.take_along_axis(w, order, -1)).reshape(sticks.shape)
    out["locs"] = np.take_along_axis(loc, order[..., None], -2).reshape(locs.shape)
    return out


RELABEL_NOTE = ("labels: each draw's components matched to a pivot clustering (least-squares draw) by "
                "shared points, pivot clusters ordered by first loc coordinate, extra occupied ones "
                "next by size, empty ones last by weight; sticks recomputed from the permuted weights")


def sklearn_peer(x: np.ndarray, T: int, alpha: float, seed: int = 0) -> dict[str, Any]:
    """scikit-learn's variational DP Gaussian mixture on the same data.

    Returns the fitted ``BayesianGaussianMixture`` (spherical covariances, truncation T,
    concentration alpha) as ``model``, its hard ``labels``, and ``clusters``: the number of
    components holding at least one point under the hard labels (occupied, as in `diagnose`).
    """
    from sklearn.mixture import BayesianGaussianMixture

    bgm = BayesianGaussianMixture(n_components=T, weight_concentration_prior_type="dirichlet_process",
                                  weight_concentration_prior=alpha, covariance_type="spherical",
                                  max_iter=500, random_state=seed).fit(x)
    labels = bgm.predict(x)
    return {"model": bgm, "labels": labels, "clusters": len(np.unique(labels))}


def point_clustering(assignment: np.ndarray, max_draws: int = 200, return_index: bool = False
                     ) -> np.ndarray | int:
    """A label-free point estimate of the clustering: the drawn assignment closest to the
    posterior co-clustering matrix (Dahl 2006's least-squares clustering).

    Parameters
    ----------
    assignment : (S, N) drawn assignments; up to ``max_draws`` evenly spaced ones are used.

    Returns
    -------
    (N,) labels of the chosen draw, or with ``return_index`` its index among the S draws.
    """
    a = np.asarray(assignment, dtype=np.int64).reshape(-1, np.shape(assignment)[-1])
    pick = np.linspace(0, len(a) - 1, min(len(a), max_draws)).astype(int)
    same = a[pick, :, None] == a[pick, None, :]  # (S, N, N)
    co = same.mean(0)
    best = int(pick[np.argmin(np.sum((same - co) ** 2, axis=(1, 2)))])
    return best if return_index else a[best]


def diagnose(problem, posterior: dict[str, np.ndarray], truth: dict | None) -> dict[str, Any]:
    """The posterior of the number of occupied clusters, clustering scores and the sklearn peer.

    Returns
    -------
    ``occupied_clusters`` {count: probability}, ``occupied_clusters_mean``,
    ``occupied_clusters_mode``; ``silhouette`` of the data under the point clustering
    (`point_clustering`; NaN with a single cluster); with ``truth["assignment"]``: ``ari``
    (adjusted Rand index of the point clustering) and ``true_clusters``; the peer
    `sklearn_peer`: ``sklearn_clusters`` and ``sklearn_silhouette`` (and ``sklearn_ari``).
    """
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    x = points(np.asarray(problem.np_data["x"], dtype=float))
    T, alpha = int(problem.np_hyper["T"]), float(problem.np_hyper["alpha"])
    a = np.asarray(posterior["assignment"]).astype(np.int64).reshape(-1, x.shape[0])
    k = occupied(a, T).sum(-1)
    values, freq = np.unique(k, return_counts=True)
    out: dict[str, Any] = {
        "occupied_clusters": {int(v): float(f / len(k)) for v, f in zip(values, freq)},
        "occupied_clusters_mean": float(k.mean()),
        "occupied_clusters_mode": int(values[np.argmax(freq)]),
    }

    def silhouette(labels: np.ndarray) -> float:
        return float(silhouette_score(x, labels)) if 2 <= len(np.unique(labels)) < len(x) else float("nan")

    point = point_clustering(a)
    peer = sklearn_peer(x, T, alpha)
    out["silhouette"] = silhouette(point)
    out["sklearn_clusters"] = peer["clusters"]
    out["sklearn_silhouette"] = silhouette(peer["labels"])
    if truth is not None and "assignment" in truth:
        true = np.asarray(truth["assignment"]).reshape(-1)
        out["true_clusters"] = len(np.unique(true))
        out["ari"] = float(adjusted_rand_score(true, point))
        out["sklearn_ari"] = float(adjusted_rand_score(true, peer["labels"]))
    return out


SPEC = ModelSpec(
    name=NAME,
    model=model,
    data={"x": DataKey(("N", "D"), support=constraints.real, min_ndim=1)},
    latent_sites=("sticks", "locs"),
    dims={"sticks": ("stick",), "locs": ("cluster", "D")},
    hyper={
        "T": Hyper(10, constraints.positive_integer),
        "alpha": Hyper(1.0, constraints.positive),
        "mu0": Hyper(0.0, constraints.real),
        "sigma0": Hyper(10.0, constraints.positive),
        "sigma": Hyper(1.0, constraints.positive),
    },
    sizes={"N": 150, "D": 2},
    seed_section="004 2.3 (2.3.1 stick-breaking eq 2.1, 2.3.3 Polya urn eqs 2.10-2.11, 2.3.4 Gibbs)",
    check=check,
    scoring=Scoring(
        diagnose=diagnose,
        relabel=relabel,
        relabel_note=RELABEL_NOTE,
    ),
    backends=Backends(
        default=("gibbs",),
        own={"gibbs": GIBBS},
        options=JIT_ELBO_ENUM,
        skip_by_default={"nuts": "about 8 minutes for 300+300 draws at N=500, T=10 (enumerated "
                                 "assignments); run it by naming it"},
    ),
)

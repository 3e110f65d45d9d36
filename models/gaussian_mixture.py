"""A finite mixture of diagonal Gaussians and the notes' EM algorithm for it (004 3.2, 003 6.8).

The assignments are discrete latents local to the data plate: every back-end that can
marginalises them exactly by enumeration (``enum``, ``nuts``, ``svi``), and the model-specific
back-end ``em`` is the closed-form EM of the notes (maximum likelihood). The mixture is
invariant under permuting its components (label switching); `relabel` sorts the components
by their first location coordinate in every draw before anything is summarised.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from scipy.special import logsumexp
from torch.distributions import constraints

from zoo.core.errors import ZooError
from zoo.core.spec import Backend, Backends, DataKey, Fit, Hyper, ModelSpec, Scoring
from zoo.inference.svi import JIT_ELBO_ENUM

NAME = "gaussian_mixture"
RELABEL_NOTE = "components relabelled by increasing locs[..., 0] in every draw (label switching)"


def model(x=None, N=None, D=3, K=3, alpha=5.0, mu0=0.0, sigma0=5.0, a0=2.0, b0=2.0):
    """A mixture of K Gaussians with diagonal covariance (seed 004 3.2: EM with categorical
    latent variables, eqs 3.4 to 3.6; 003 6.8: mixture distributions, Gaussian mixtures).

    Generative story::

        weights ~ Dirichlet(alpha, ..., alpha)            # (K,) mixing proportions
        locs[k, d] ~ Normal(mu0, sigma0)                  # (K, D) component means
        scales[k, d] ~ Gamma(a0, b0)                      # (K, D) component sds (shape a0, rate b0)
        assignment_i | weights ~ Categorical(weights)     # i = 1..N, which component made x_i
        x_i | assignment_i = k ~ Normal(locs[k], diag(scales[k]^2))

    p(x_i) = sum_k weights_k Normal(x_i | locs_k, scales_k) (004 eq 3.4); the posterior
    probability of ``assignment_i = k`` given the parameters is the E step of EM (eq 3.5),
    computed by `responsibilities`. ``x`` may be (N, D) or, for one dimension, (N,): then
    ``locs`` and ``scales`` are (K,). The zoo's data validation takes ``x`` as (N, D); pass
    one-dimensional data as ``x[:, None]``. The likelihood is invariant under permuting the
    components, so the posterior has K! symmetric modes (label switching); the zoo relabels
    every draw by increasing ``locs[..., 0]``.
    """
    K = int(K)
    if x is not None:
        N = x.shape[0]
        D = x.shape[1] if x.dim() == 2 else None
    else:
        D = int(D) if D is not None else None
    event = (K, D) if D is not None else (K,)
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    weights = pyro.sample("weights", dist.Dirichlet(alpha * torch.ones(K, dtype=torch.float64)))
    locs = pyro.sample("locs", dist.Normal(torch.as_tensor(mu0, dtype=torch.float64), sigma0)
                       .expand(event).to_event(len(event)))
    scales = pyro.sample("scales", dist.Gamma(torch.as_tensor(a0, dtype=torch.float64), b0)
                         .expand(event).to_event(len(event)))
    with pyro.plate("data", N, dim=-1):
        a = pyro.sample("assignment", dist.Categorical(weights), infer={"enumerate": "parallel"})
        if D is None:
            pyro.sample("x", dist.Normal(Vindex(locs)[..., a], Vindex(scales)[..., a]), obs=x)
        else:
            pyro.sample("x", dist.Normal(Vindex(locs)[..., a, :], Vindex(scales)[..., a, :]).to_event(1),
                        obs=x)


# ---------------------------------------------------------------------------------------------
# Closed-form pieces: component log densities, responsibilities (E step), log-likelihood.


def _as_2d(x: np.ndarray, locs: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, locs, scales = (np.asarray(v, dtype=float) for v in (x, locs, scales))
    if x.ndim == 1:
        x = x[:, None]
    if locs.ndim == 1:
        locs, scales = locs[:, None], scales[:, None]
    return x, locs, scales


def joint_log_prob(x: np.ndarray, weights: np.ndarray, locs: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """log p(x_i, assignment_i = k | parameters) for every point and component.

    Parameters
    ----------
    x : (N,) or (N, D) data.
    weights : (K,) mixing proportions.
    locs, scales : (K,) or (K, D) component means and standard deviations.

    Returns
    -------
    (N, K) array.
    """
    x, locs, scales = _as_2d(x, locs, scales)
    z = (x[:, None, :] - locs[None]) / scales[None]
    comp = -0.5 * np.sum(z**2, axis=-1) - np.sum(np.log(scales), axis=-1) - 0.5 * x.shape[1] * np.log(2 * np.pi)
    with np.errstate(divide="ignore"):
        return comp + np.log(np.asarray(weights, dtype=float))


def responsibilities(x: np.ndarray, weights: np.ndarray, locs: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Exact posterior assignment probabilities p(assignment_i = k | x_i, parameters) (004 eq 3.5).

    Parameters
    ----------
    x : (N,) or (N, D) data.
    weights : (K,) mixing proportions.
    locs, scales : (K,) or (K, D) component means and standard deviations.

    Returns
    -------
    (N, K) array whose rows sum to one, by enumerating the K components.
    """
    lp = joint_log_prob(x, weights, locs, scales)
    return np.exp(lp - logsumexp(lp, axis=1, keepdims=True))


def log_likelihood(x: np.ndarray, weights: np.ndarray, locs: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Per-point mixture log-likelihood log sum_k weights_k Normal(x_i | locs_k, scales_k) (eq 3.4).

    Returns
    -------
    (N,) array.
    """
    return logsumexp(joint_log_prob(x, weights, locs, scales), axis=1)


# ---------------------------------------------------------------------------------------------
# EM (004 3.2): E step = responsibilities, M step = weighted maximum likelihood.


def _kmeans_pp(x: np.ndarray, K: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: K distinct-ish data points, each far from those already chosen."""
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, K):
        d2 = np.min(((x[:, None, :] - np.asarray(centers)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        p = d2 / total if total > 0 else np.full(len(x), 1 / len(x))
        centers.append(x[rng.choice(len(x), p=p)])
    return np.asarray(centers)


def _m_step(x: np.ndarray, resp: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """argmax of sum_i sum_k resp_ik log p(x_i, k | theta) (004 eq 3.6), variances >= floor.

    Clipping each variance at the floor is the exact maximiser under that constraint (the
    objective is unimodal in each variance), so EM stays monotone.
    """
    nk = resp.sum(0) + 10 * np.finfo(float).eps
    weights = nk / nk.sum()
    locs = resp.T @ x / nk[:, None]
    var = np.einsum("nk,nkd->kd", resp, (x[:, None, :] - locs[None]) ** 2) / nk[:, None]
    return weights, locs, np.sqrt(np.maximum(var, floor))


def em(x: np.ndarray, K: int, *, seed: int = 0, max_iter: int = 500, tol: float = 1e-6,
       restarts: int = 5) -> dict:
    """Maximum-likelihood EM for a diagonal Gaussian mixture, best of several k-means++ starts.

    The priors are ignored (maximum likelihood, as scikit-learn's GaussianMixture); each
    variance is floored at 1e-6 times the data's variance along its dimension, so a
    component collapsing onto one point cannot send the likelihood to infinity.

    Parameters
    ----------
    x : (N,) or (N, D) data.
    K : number of components.
    seed : seeds the k-means++ starts.
    max_iter : most EM iterations per start.
    tol : stop when the mean log-likelihood per point rises by less than this.
    restarts : number of starts; the one with the highest final log-likelihood is kept.

    Returns
    -------
    dict with ``weights`` (K,), ``locs`` and ``scales`` ((K,) for 1-D data, else (K, D)),
    ``resp`` (N, K), ``loglik_trace`` (total log-likelihood before each M step and at the end:
    non-decreasing), ``loglik`` (final total), ``loglik_per_point``, ``iterations``,
    ``converged``, ``restart_logliks`` (final total of every start).
    """
    x = np.asarray(x, dtype=float)
    one_d = x.ndim == 1
    x2 = x[:, None] if one_d else x
    floor = 1e-6 * np.maximum(x2.var(axis=0), 1e-12)
    rng = np.random.default_rng(seed)
    best, finals = None, []
    for _ in range(restarts):
        centers = _kmeans_pp(x2, K, rng)
        hard = np.argmin(((x2[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
        resp = np.eye(K)[hard]
        weights, locs, scales = _m_step(x2, resp, floor)
        trace: list[float] = []
        converged = False
        for _ in range(max_iter):
            lp = joint_log_prob(x2, weights, locs, scales)
            ll = logsumexp(lp, axis=1)
            trace.append(float(ll.sum()))
            if len(trace) > 1 and (trace[-1] - trace[-2]) / len(x2) < tol:
                converged = True
                break
            resp = np.exp(lp - ll[:, None])
            weights, locs, scales = _m_step(x2, resp, floor)
        else:
            lp = joint_log_prob(x2, weights, locs, scales)
            ll = logsumexp(lp, axis=1)
            trace.append(float(ll.sum()))
        resp = np.exp(lp - ll[:, None])
        finals.append(trace[-1])
        if best is None or trace[-1] > best["loglik"]:
            best = {"weights": weights, "locs": locs, "scales": scales, "resp": resp,
                    "loglik_trace": trace, "loglik": trace[-1], "loglik_per_point": trace[-1] / len(x2),
                    "iterations": len(trace) - 1, "converged": converged}
    assert best is not None
    if one_d:
        best["locs"], best["scales"] = best["locs"][:, 0], best["scales"][:, 0]
    best["restart_logliks"] = finals
    return best


def _fit_em(problem, *, seed: int, num_samples: int, num_chains: int, max_iter: int, tol: float,
            restarts: int, progress=None) -> Fit:
    x = problem.np_data["x"]
    K = int(problem.np_hyper["K"])
    res = em(x, K, seed=seed, max_iter=max_iter, tol=tol, restarts=restarts)
    rng = np.random.default_rng(seed)
    shape = (num_chains, num_samples)
    # assignment draws from the exact conditional posterior given the EM estimate (E step)
    cum = np.cumsum(res["resp"], axis=1)
    u = rng.random(shape + (len(x), 1))
    assignment = np.minimum((u > cum).sum(-1), K - 1)
    posterior = {k: np.broadcast_to(res[k], shape + res[k].shape).copy() for k in ("weights", "locs", "scales")}
    posterior["assignment"] = assignment.astype(np.int64)
    return Fit(
        posterior=posterior,
        diagnostics={"loglik": res["loglik"], "loglik_em_per_point": res["loglik_per_point"],
                     "loglik_trace": res["loglik_trace"], "steps": res["iterations"],
                     "converged": res["converged"], "restart_logliks": res["restart_logliks"]},
        kind="point",
    )


EM_BACKEND = Backend(
    name="em",
    fit=_fit_em,
    options={"num_samples": 1000, "num_chains": 4, "max_iter": 500, "tol": 1e-6, "restarts": 5,
             "progress": None},
    quick={"num_samples": 20, "num_chains": 2, "restarts": 2},
    summary="the notes' EM (004 3.2), maximum likelihood: closed-form E and M steps, best of "
            "k-means++ restarts; assignments drawn from the responsibilities",
)


# ---------------------------------------------------------------------------------------------
# Label switching, peer scores, validation.


def relabel(posterior: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sort the components by ``locs[..., 0]`` in every draw (label switching).

    ``weights``, ``locs`` and ``scales`` are permuted and ``assignment`` draws are remapped
    with the same permutation, so each draw describes the same mixture as before.

    Parameters
    ----------
    posterior : site -> (chain, draw, ...) arrays; ``locs`` is (chain, draw, K[, D]).

    Returns
    -------
    A new dict; sites other than these four are passed through unchanged.
    """
    out = dict(posterior)
    if "locs" not in posterior:
        return out
    locs = np.asarray(posterior["locs"])
    key = locs if locs.ndim == 3 else locs[..., 0]  # (chain, draw, K) for 1-D data
    order = np.argsort(key, axis=-1, kind="stable")  # (chain, draw, K)
    for site in ("weights", "locs", "scales"):
        if site in posterior:
            v = np.asarray(posterior[site])
            idx = order.reshape(order.shape + (1,) * (v.ndim - order.ndim))
            out[site] = np.take_along_axis(v, idx, axis=2)
    if "assignment" in posterior:
        inverse = np.argsort(order, axis=-1)  # old label -> new label
        a = np.asarray(posterior["assignment"]).astype(np.int64)
        out["assignment"] = np.take_along_axis(inverse, a, axis=-1)
    return out


@functools.lru_cache(maxsize=8)
def _sklearn_loglik(x_bytes: bytes, shape: tuple[int, ...], K: int) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = np.frombuffer(x_bytes, dtype=float).reshape(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(K, covariance_type="diag", n_init=3, random_state=0).fit(x)
    return float(gm.score(x))


def sklearn_loglik_per_point(x: np.ndarray, K: int) -> float:
    """The peer: scikit-learn GaussianMixture(K, diag, n_init=3, random_state=0) mean log-likelihood."""
    x = np.ascontiguousarray(np.asarray(x, dtype=float))
    x = x[:, None] if x.ndim == 1 else x
    return _sklearn_loglik(x.tobytes(), x.shape, int(K))


def modal_assignment(assignment: np.ndarray, K: int) -> np.ndarray:
    """The most frequent label of every point over (chain, draw, N) draws."""
    a = np.asarray(assignment).reshape(-1, np.shape(assignment)[-1]).astype(np.int64)
    counts = np.stack([(a == k).sum(0) for k in range(K)], axis=1)
    return counts.argmax(1)


def diagnose(problem, posterior: dict[str, np.ndarray], truth: dict | None) -> dict:
    """Peer scores after every back-end: log-likelihood per point at the posterior mean,
    scikit-learn's, adjusted Rand index against the true assignment, silhouette.

    Parameters
    ----------
    problem : the `zoo.core.problem.Problem` (its ``np_data["x"]`` and ``np_hyper["K"]``).
    posterior : site -> (chain, draw, ...) arrays, already relabelled.
    truth : the simulated latents, or None.

    Returns
    -------
    dict of scalars: ``loglik_per_point``, ``sklearn_loglik_per_point``, ``occupied``
    (clusters in the modal assignment), ``silhouette`` (NaN below 2 clusters), and ``ari``
    when ``truth`` holds ``assignment``.
    """
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    x = np.asarray(problem.np_data["x"], dtype=float)
    K = int(problem.np_hyper["K"])
    mean = {k: np.asarray(posterior[k]).reshape((-1,) + np.shape(posterior[k])[2:]).mean(0)
            for k in ("weights", "locs", "scales")}
    out: dict = {"loglik_per_point": float(log_likelihood(x, mean["weights"], mean["locs"], mean["scales"]).mean()),
                 "sklearn_loglik_per_point": sklearn_loglik_per_point(x, K)}
    if "assignment" in posterior:
        labels = modal_assignment(posterior["assignment"], K)
    else:
        labels = responsibilities(x, mean["weights"], mean["locs"], mean["scales"]).argmax(1)
    occupied = len(np.unique(labels))
    out["occupied"] = int(occupied)
    x2 = x[:, None] if x.ndim == 1 else x
    out["silhouette"] = float(silhouette_score(x2, labels)) if 2 <= occupied < len(x2) else float("nan")
    if truth is not None and "assignment" in truth:
        out["ari"] = float(adjusted_rand_score(np.asarray(truth["assignment"]).reshape(-1), labels))
    return out


def check(data: dict, hyper: dict) -> None:
    """K is a positive integer no larger than the number of points."""
    K = hyper["K"]
    if not float(K).is_integer() or K < 1:
        raise ZooError(f"model {NAME!r}: hyperparameter K must be a positive integer, got {K!r}")
    x = np.asarray(data["x"])
    if x.ndim not in (1, 2):
        raise ZooError(f"model {NAME!r}: data key x must have shape (N,) or (N, D), got shape {x.shape}")
    if int(K) > x.shape[0]:
        raise ZooError(f"model {NAME!r}: hyperparameter K={int(K)} exceeds the number of points "
                       f"N={x.shape[0]} in data key x")


SPEC = ModelSpec(
    name=NAME,
    model=model,
    data={"x": DataKey(("N", "D"), support=constraints.real, min_ndim=1)},
    latent_sites=("weights", "locs", "scales"),
    dims={"weights": ("component",), "locs": ("component", "D"), "scales": ("component", "D")},
    hyper={
        "K": Hyper(3, constraints.positive_integer),
        "alpha": Hyper(5.0, constraints.positive),
        "mu0": Hyper(0.0, constraints.real),
        "sigma0": Hyper(5.0, constraints.positive),
        "a0": Hyper(2.0, constraints.positive),
        "b0": Hyper(2.0, constraints.positive),
    },
    sizes={"N": 200, "D": 3},
    seed_section="004 3.2 (EM algorithm, 3.2.2 categorical latent variables), 003 6.8 (mixture distributions)",
    check=check,
    scoring=Scoring(
        diagnose=diagnose,
        relabel=relabel,
        relabel_note=RELABEL_NOTE,
    ),
    backends=Backends(
        default=("em",),
        own={"em": EM_BACKEND},
        options=JIT_ELBO_ENUM,
        skip_by_default={
            "nuts": "slow with the assignments enumerated: 150 + 150 draws of one chain at N=150 took "
                    "150 s on a busy 2-core machine, so the default 4 x (1000 + 1000) draws take tens of "
                    "minutes; name it with fewer draws (e.g. num_samples=200, num_warmup=200)",
            "hmc": "slow and poorly mixing here: 30 + 30 draws at N=200 took 20 s with bulk ESS 2 on a "
                   "busy 2-core machine; name it to run it",
        },
    ),
)

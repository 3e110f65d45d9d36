"""A K-armed Bernoulli bandit: one Beta prior per arm, the model Thompson sampling draws from."""
from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
from pyro.ops.indexing import Vindex
from scipy import special, stats
from torch.distributions import constraints

from zoo.core.errors import ZooError
from zoo.core.spec import Backends, DataKey, ExactPosterior, Hyper, ModelSpec, Reference
from zoo.inference.svi import JIT_ELBO


def model(arm, y=None, N=None, K=3, alpha=1.0, beta=1.0):
    """Rewards of a K-armed Bernoulli bandit with unknown success probabilities (seed 000
    beta分布: the Beta prior and Thompson sampling; Hoeffding's inequality and UCB).

    Generative story::

        p_k ~ Beta(alpha, beta)          # k = 0..K-1, success probability of arm k
        y_i | p, arm_i ~ Bernoulli(p[arm_i])   # i = 1..N, the reward of round i

    ``arm`` (which arm was played in each round) is a covariate: the policy chose it, and
    the likelihood does not depend on how (the choice depends only on past rewards). The
    posterior is independent per arm, Beta(alpha + successes_k, beta + failures_k); an arm
    never played keeps its prior. Thompson sampling plays the arm whose posterior draw is
    largest (`zoo.simulate_bandit`); UCB1 plays the largest mean + sqrt(2 ln t / n_k), the
    bound Hoeffding's inequality gives (000 式5-4, 5-5).
    """
    K = int(K)
    p = pyro.sample("p", dist.Beta(alpha, beta).expand([K]).to_event(1))
    with pyro.plate("data", arm.shape[0]):
        # Vindex: p's batch dims broadcast against arm's, so p of shape (S, 1, K) under an
        # outer plate of S draws gives (S, N), where p[..., arm] would give (S, 1, N).
        pyro.sample("y", dist.Bernoulli(Vindex(p)[..., arm]), obs=y)


def inputs(rng: np.random.Generator, sizes: dict, hyper: dict) -> dict:
    """Arms played uniformly at random, shape (N,)."""
    return {"arm": rng.integers(0, int(hyper["K"]), size=sizes["N"])}


def check(data: dict, hyper: dict) -> None:
    """Every ``arm`` is an index in [0, K)."""
    arm, K = np.asarray(data["arm"]), int(hyper["K"])
    bad = (arm < 0) | (arm >= K)
    if bad.any():
        idx = np.flatnonzero(bad)
        shown = ", ".join(f"{i}: {int(arm[i])}" for i in idx[:5])
        more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
        raise ZooError(f"model 'bernoulli_bandit': data key arm must hold arm indices in [0, K={K}) "
                       f"(set K with hyper={{'K': ...}}), got {{{shown}}}{more}")


def posterior_params(arm: np.ndarray, y: np.ndarray, K: int, alpha: float,
                     beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-arm Beta posterior parameters ``(alpha_n, beta_n)``, each of shape (K,)."""
    arm = np.asarray(arm, dtype=int)
    pulls = np.bincount(arm, minlength=K).astype(float)
    wins = np.bincount(arm, weights=np.asarray(y, dtype=float), minlength=K)
    return count_params(pulls, wins, alpha, beta)


def count_params(pulls: np.ndarray, wins: np.ndarray, alpha: float,
                 beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-arm Beta posterior parameters from each arm's plays and successes, shape (K,) each:
    ``(alpha + wins, beta + pulls - wins)``."""
    return alpha + wins, beta + pulls - wins


def exact(data: dict, hyper: dict) -> ExactPosterior:
    """Independent Beta posteriors per arm; evidence prod_k B(alpha_n,k, beta_n,k) / B(alpha, beta).

    Parameters
    ----------
    data : ``{"arm": ints in [0, K), shape (N,), "y": 0/1, shape (N,)}``.
    hyper : ``{"K": int, "alpha": float, "beta": float}``.
    """
    K, alpha, beta = int(hyper["K"]), float(hyper["alpha"]), float(hyper["beta"])
    alpha_n, beta_n = posterior_params(data["arm"], data["y"], K, alpha, beta)
    post = stats.beta(alpha_n, beta_n)
    log_evidence = float(np.sum(special.betaln(alpha_n, beta_n) - special.betaln(alpha, beta)))
    return ExactPosterior(
        mean={"p": np.asarray(post.mean())},
        sd={"p": np.asarray(post.std())},
        sample=lambda rng, n: {"p": rng.beta(alpha_n, beta_n, size=(n, K))},
        log_prob=lambda values: float(np.sum(post.logpdf(values["p"]))),
        log_evidence=log_evidence,
        extra={"alpha_n": alpha_n, "beta_n": beta_n},
        marginal=lambda site, index: stats.beta(alpha_n[index], beta_n[index]),
    )


SPEC = ModelSpec(
    name="bernoulli_bandit",
    model=model,
    data={
        "arm": DataKey(("N",), dtype="long", observed=False),
        "y": DataKey(("N",), support=constraints.boolean),
    },
    latent_sites=("p",),
    dims={"p": ("K",)},
    hyper={
        "K": Hyper(3, constraints.positive_integer),
        "alpha": Hyper(1.0, constraints.positive),
        "beta": Hyper(1.0, constraints.positive),
    },
    sizes={"N": 200},
    seed_section="000 (Beta prior, Thompson sampling; Hoeffding -> UCB)",
    inputs=inputs,
    check=check,
    reference=Reference(
        exact=exact,
    ),
    backends=Backends(
        default=("exact",),
        options=JIT_ELBO,
    ),
)

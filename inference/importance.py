"""Back-end ``importance``: self-normalised importance sampling (004 1.2; 002 section 5).

The proposal is the prior (``proposal="prior"``) or a guide fitted by SVI first
(``proposal="guide"``, family ``guide``); ``"auto"`` (default) takes the guide where SVI applies
to the model and the prior where it does not. Weights w = p(data, z) / q(z) give the log evidence
estimate log mean w, the weight effective sample size (sum w)^2 / sum w^2 and the Pareto k of
their tail (k > 0.7: the estimate is unreliable). Posterior draws are a resample by weight.
"""
from __future__ import annotations

import math

import numpy as np

from zoo.core import arviz_io
from zoo.core.problem import Problem
from zoo.core.spec import Backend, Fit
from zoo.inference import svi
from zoo.inference.common import (
    complete_draws,
    importance_weights,
    needs_continuous,
    prior,
    seed_all,
    to_chains,
)


def fit(problem: Problem, *, seed: int, proposal: str, guide: str, num_particles: int,
        num_samples: int, num_chains: int, num_steps: int, lr: float, progress=None) -> Fit:
    """Weight ``num_particles`` proposal draws and resample ``num_chains x num_samples``."""
    if proposal == "auto":
        proposal = "prior" if "svi" in problem.spec.backends.limits else "guide"
    if proposal == "guide":
        q, _ = svi.train(problem, guide=guide, seed=seed, num_steps=num_steps, lr=lr,
                         lr_decay=svi.SVI_OPTIONS["lr_decay"], num_particles=1, progress=progress)
    else:
        q = prior(problem)
    seed_all(seed + 1)
    log_w, draws = importance_weights(problem, q, num_particles)
    finite = np.isfinite(log_w)
    w = np.exp(log_w - log_w[finite].max()) * finite
    w /= w.sum()
    rng = np.random.default_rng(seed)
    index = rng.choice(num_particles, size=num_chains * num_samples, p=w)
    log_evidence = float(np.logaddexp.reduce(log_w[finite]) - math.log(num_particles))
    return Fit(
        posterior=to_chains(complete_draws(problem, {k: v[index] for k, v in draws.items()}), num_chains),
        diagnostics={"log_evidence": log_evidence, "weight_ess": float(1 / np.sum(w**2)),
                     "pareto_k": arviz_io.pareto_k(log_w[finite]), "proposal": proposal,
                     "num_particles": num_particles},
        kind="resampled",
    )


BACKEND = Backend(
    name="importance",
    fit=fit,
    options={"proposal": "auto", "guide": "mean_field", "num_particles": 20000, "num_samples": 1000,
             "num_chains": 4, "num_steps": 5000, "lr": 0.05, "progress": None},
    choices={"proposal": ("auto", "prior", "guide"), "guide": tuple(g for g in svi.GUIDES if g != "delta")},
    summary="self-normalised importance sampling from the prior or a fitted guide",
    applicable=needs_continuous,
)

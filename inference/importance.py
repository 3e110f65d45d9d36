"""Back-end ``importance``: self-normalised importance sampling (004 1.2; 002 section 5).

The proposal is the prior (``proposal="prior"``) or a guide fitted by SVI first
(``proposal="guide"``, family ``guide``); ``"auto"`` (default) takes the guide where SVI applies
to the model and the prior where it does not. A model with a flat prior (``ImproperUniform``,
``.mask(False)``) has no prior to draw from: the prior proposal refuses it, and with the
guide the log evidence is not reported (an improper prior has none).

Weights w = p(data, z) / q(z) give the log evidence estimate log mean w, the weight effective
sample size (sum w)^2 / sum w^2 and the Pareto k of their tail (k > 0.7: the estimate is
unreliable). Posterior draws are a resample by weight.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from zoo.core import arviz_io
from zoo.core.errors import InferenceError
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


def resolved_proposal(problem: Problem, proposal: str) -> str:
    """The proposal ``"auto"`` stands for on this model: the guide where SVI applies, else the prior."""
    if proposal == "auto":
        return "prior" if "svi" in problem.spec.backends.limits else "guide"
    return proposal


def refuses(problem: Problem, options: Mapping[str, Any]) -> str | None:
    """A prior proposal needs a proper prior; a guide proposal, a guide svi would fit."""
    if resolved_proposal(problem, options["proposal"]) == "prior":
        return problem.proper_prior("importance sampling with proposal='prior'")
    return svi.refuses(problem, options)


def fit(problem: Problem, *, seed: int, proposal: str, guide: str, num_particles: int,
        num_samples: int, num_chains: int, num_steps: int, lr: float, jit: bool, progress=None) -> Fit:
    """Weight ``num_particles`` proposal draws and resample ``num_chains x num_samples``.

    Raises
    ------
    InferenceError
        when no proposal draw has a finite weight (every one falls where the model has zero
        density, or the density overflows).
    """
    proposal = resolved_proposal(problem, proposal)
    if proposal == "guide":
        q, _ = svi.train(problem, guide=guide, seed=seed, num_steps=num_steps, lr=lr,
                         lr_decay=svi.SVI_OPTIONS["lr_decay"], num_particles=1, progress=progress, jit=jit)
    else:
        q = prior(problem)
    seed_all(seed + 1)
    log_w, draws = importance_weights(problem, q, num_particles)
    finite = np.isfinite(log_w)
    if not finite.any():
        raise InferenceError(f"model {problem.name!r}, back-end 'importance' (proposal {proposal!r}): none of "
                             f"{num_particles} proposal draws has a finite weight (log weights: "
                             f"{np.unique(log_w)[:3].tolist()}); the proposal misses the posterior's support")
    w = np.exp(log_w - log_w[finite].max()) * finite
    w /= w.sum()
    rng = np.random.default_rng(seed)
    index = rng.choice(num_particles, size=num_chains * num_samples, p=w)
    diagnostics = {"weight_ess": float(1 / np.sum(w**2)), "pareto_k": arviz_io.pareto_k(log_w[finite]),
                   "proposal": proposal, "num_particles": num_particles}
    if problem.improper:
        diagnostics["note"] = "flat prior: no log evidence (the prior does not integrate to one)"
    else:
        diagnostics["log_evidence"] = float(np.logaddexp.reduce(log_w[finite]) - math.log(num_particles))
    return Fit(
        posterior=to_chains(complete_draws(problem, {k: v[index] for k, v in draws.items()}), num_chains),
        diagnostics=diagnostics,
        kind="resampled",
    )


BACKEND = Backend(
    name="importance",
    fit=fit,
    options={"proposal": "auto", "guide": "mean_field", "num_particles": 20000, "num_samples": 1000,
             "num_chains": 4, "num_steps": 5000, "lr": 0.05, "jit": False, "progress": None},
    choices={"proposal": ("auto", "prior", "guide"), "guide": tuple(g for g in svi.GUIDES if g != "delta")},
    summary="self-normalised importance sampling from the prior or a fitted guide",
    applicable=needs_continuous,
    refuses=refuses,
)

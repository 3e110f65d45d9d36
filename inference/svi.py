"""Back-end ``svi``: stochastic variational inference with a choice of guide family.

Guides (CONCEPTS.md E): ``mean_field`` (AutoNormal), ``diag`` (AutoDiagonalNormal),
``full_rank`` (AutoMultivariateNormal), ``low_rank`` (AutoLowRankMultivariateNormal), ``flow``
(AutoIAFNormal, an inverse autoregressive flow), ``delta`` (AutoDelta: the MAP point estimate,
004 2.1.4) and ``laplace`` (AutoLaplaceApproximation: a Gaussian at the MAP with the inverse
Hessian as covariance). Adam's learning rate decays geometrically to ``lr * lr_decay`` over the
run, and the ELBO is re-estimated at the end with many particles.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import pyro
from pyro.infer import SVI, Trace_ELBO
from pyro.infer import autoguide as ag
from pyro.infer.autoguide.initialization import init_to_value
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from inference.common import importance_weights, init_values, sample_vectorised, seed_all, to_chains
from inference.mcmc import continuous_only
from zoo.errors import InferenceError
from zoo.problem import Problem
from zoo.spec import Backend, Fit

GUIDES = {
    "mean_field": ag.AutoNormal,
    "diag": ag.AutoDiagonalNormal,
    "full_rank": ag.AutoMultivariateNormal,
    "low_rank": ag.AutoLowRankMultivariateNormal,
    "flow": partial(ag.AutoIAFNormal, num_transforms=2),
    "delta": ag.AutoDelta,
    "laplace": ag.AutoLaplaceApproximation,
}


def train(problem: Problem, *, guide: str, seed: int, num_steps: int, lr: float, lr_decay: float,
          num_particles: int, progress: bool | None) -> tuple[Any, list[float]]:
    """Fit a guide of family ``guide`` by maximising the ELBO; returns (guide, ELBO per step).

    Raises
    ------
    InferenceError
        when the ELBO becomes NaN or infinite, naming the step.
    """
    seed_all(seed)
    pyro.clear_param_store()
    q = GUIDES[guide](problem.model, init_loc_fn=init_to_value(values=init_values(problem, seed)))
    optim = ClippedAdam({"lr": lr, "lrd": lr_decay ** (1 / num_steps)})
    svi = SVI(problem.model, q, optim,
              Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                         max_plate_nesting=problem.max_plate_nesting))
    trace: list[float] = []
    with pyro.validation_enabled(False):
        for step in tqdm(range(num_steps), desc=f"svi {guide}", disable=not progress, leave=False):
            loss = svi.step()
            if not math.isfinite(loss):
                hint = (f"try a smaller lr (was {lr})" if math.isnan(loss) else
                        "a guide draw fell where the model has zero density: the posterior's "
                        "support is narrower than the guide's (a Uniform(0, theta) likelihood "
                        "needs theta > max x), so KL(q || p) is infinite")
                raise InferenceError(f"model {problem.name!r}, back-end 'svi' (guide {guide!r}): "
                                     f"the ELBO became {-loss} at step {step}; {hint}")
            trace.append(-loss)
    if guide == "laplace":
        q = q.laplace_approximation()
    return q, trace


def elbo_estimate(problem: Problem, guide: Any, num: int) -> tuple[float, float]:
    """Monte Carlo ELBO and importance-weighted log evidence with ``num`` guide draws."""
    log_w, _ = importance_weights(problem, guide, num)
    return float(log_w.mean()), float(np.logaddexp.reduce(log_w) - math.log(num))


def fit(problem: Problem, *, seed: int, guide: str, num_steps: int, lr: float, lr_decay: float,
        num_particles: int, num_samples: int, num_chains: int, num_elbo_particles: int,
        progress: bool | None) -> Fit:
    """Fit the guide, then draw ``num_chains x num_samples`` samples from it."""
    q, trace = train(problem, guide=guide, seed=seed, num_steps=num_steps, lr=lr,
                     lr_decay=lr_decay, num_particles=num_particles, progress=progress)
    draws = sample_vectorised(problem, q, num_chains * num_samples)
    diagnostics: dict[str, Any] = {"elbo_trace": trace, "steps": num_steps, "guide": guide}
    if guide == "delta":
        diagnostics["note"] = "MAP point estimate: no spread, no ELBO"
    else:
        diagnostics["elbo"], diagnostics["iwae"] = elbo_estimate(problem, q, num_elbo_particles)
    return Fit(posterior=to_chains(draws, num_chains), diagnostics=diagnostics)


SVI_OPTIONS: dict[str, Any] = {
    "guide": "mean_field", "num_steps": 1000, "lr": 0.05, "lr_decay": 0.02, "num_particles": 1,
    "num_samples": 1000, "num_chains": 4, "num_elbo_particles": 2000, "progress": None,
}

BACKEND = Backend(
    name="svi",
    fit=fit,
    options=SVI_OPTIONS,
    choices={"guide": tuple(GUIDES)},
    summary="stochastic variational inference; guide families " + ", ".join(GUIDES),
    applicable=continuous_only,
)

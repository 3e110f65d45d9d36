"""Back-end ``svi``: stochastic variational inference with a choice of guide family.

Guides (CONCEPTS.md E): ``mean_field`` (AutoNormal), ``diag`` (AutoDiagonalNormal),
``full_rank`` (AutoMultivariateNormal), ``low_rank`` (AutoLowRankMultivariateNormal), ``flow``
(a standard normal through RealNVP affine coupling layers, `inference.flows`, 004 3.6),
``delta`` (AutoDelta: the MAP point estimate, 004 2.1.4) and ``laplace``
(AutoLaplaceApproximation: a Gaussian at the MAP with the inverse Hessian as covariance). A
model may add its own guide families (an amortised encoder) in its spec's ``guides``.
Discrete latent sites are summed out exactly (TraceEnum_ELBO, the guide covering the
continuous sites only) and their draws rebuilt with ``infer_discrete``. By default training
stops by the convergence rule of `train` (``num_steps`` is a cap); the ELBO is re-estimated
at the end with many draws of the guide.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer import autoguide as ag
from pyro.infer.autoguide.initialization import init_to_value
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from zoo.core import arviz_io
from zoo.core.errors import InferenceError, ZooError
from zoo.core.files import atomic_write
from zoo.core.problem import Problem
from zoo.core.spec import Backend, Fit
from zoo.inference.common import (
    complete_draws,
    enumerated,
    importance_weights,
    needs_continuous,
    optimiser_start,
    run_key,
    sample_vectorised,
    seed_all,
    to_chains,
)
from zoo.inference.flows import coupling_guide

GUIDES = {
    "mean_field": ag.AutoNormal,
    "diag": ag.AutoDiagonalNormal,
    "full_rank": ag.AutoMultivariateNormal,
    "low_rank": ag.AutoLowRankMultivariateNormal,
    "flow": coupling_guide,
    "delta": ag.AutoDelta,
    "laplace": ag.AutoLaplaceApproximation,
}


def train(problem: Problem, *, guide: str, seed: int, num_steps: int, lr: float, lr_decay: float,
          num_particles: int, progress: bool | None, converge: bool = True, checkpoint: str = "",
          checkpoint_every: int = 100) -> tuple[Any, list[float]]:
    """Fit a guide of family ``guide`` by maximising the ELBO; returns (guide, ELBO per step).

    ``converge=True``: the convergence rule of `_Schedule`: a constant rate until the windowed
    ELBO stops improving, then a geometric anneal to ``lr * lr_decay`` over as many steps
    again (at least 1000); ``num_steps`` caps the whole. Easy posteriors stop early, slow ones
    run longer, and the steps used are reported. ``converge=False``: exactly ``num_steps``
    steps with the rate decaying geometrically to ``lr * lr_decay``.

    ``checkpoint`` (a file path): every ``checkpoint_every`` steps the guide's parameters, the
    optimiser's state, the random number generators' state and the ELBO trace are written
    there atomically; a re-run with the same settings resumes from it bit-identically (and a
    finished run's checkpoint returns the trained guide at once). A killed run loses at most
    ``checkpoint_every`` steps.

    Raises
    ------
    InferenceError
        when the ELBO becomes NaN or infinite, naming the step.
    """
    seed_all(seed)
    pyro.clear_param_store()
    discrete = list(problem.discrete_sites)
    if guide in problem.spec.backends.guides:  # the model's own guide (an amortised encoder)
        q = problem.spec.backends.guides[guide](problem)
    else:  # an autoguide over the continuous sites; the discrete ones are enumerated
        q = GUIDES[guide](poutine.block(problem.model, hide=discrete) if discrete else problem.model,
                          init_loc_fn=init_to_value(values=optimiser_start(problem, seed)))
    optim = ClippedAdam({"lr": lr, "lrd": 1.0 if converge else lr_decay ** (1 / num_steps)})
    plateau = _Schedule(lr, lr * lr_decay, num_steps) if converge else None
    elbo = TraceEnum_ELBO if discrete else Trace_ELBO
    svi = SVI(enumerated(problem) if discrete else problem.model, q, optim,
              elbo(num_particles=num_particles, vectorize_particles=num_particles > 1,
                   max_plate_nesting=problem.max_plate_nesting))
    trace: list[float] = []
    ckpt = Checkpoint(checkpoint, run_key(problem, {
        "guide": guide, "seed": seed, "num_steps": num_steps, "lr": lr, "lr_decay": lr_decay,
        "num_particles": num_particles, "converge": converge})) if checkpoint else None
    done = False
    if ckpt is not None and ckpt.path.exists():
        with poutine.block(), torch.no_grad():
            q()  # creates the guide's parameters, to be overwritten by the checkpoint's
        trace, done = ckpt.restore(optim, plateau)
    with pyro.validation_enabled(False):
        for step in tqdm(range(len(trace), num_steps if not done else 0), desc=f"svi {guide}",
                         disable=not progress, leave=False):
            loss = svi.step()
            if not math.isfinite(loss):
                hint = (f"try a smaller lr (was {lr})" if math.isnan(loss) else
                        "a guide draw fell where the model has zero density: the posterior's "
                        "support is narrower than the guide's (a Uniform(0, theta) likelihood "
                        "needs theta > max x), so KL(q || p) is infinite")
                raise InferenceError(f"model {problem.name!r}, back-end 'svi' (guide {guide!r}): "
                                     f"the ELBO became {-loss} at step {step}; {hint}")
            trace.append(-loss)
            stop = bool(plateau and plateau.stop(optim, trace))
            if ckpt is not None and (stop or len(trace) % checkpoint_every == 0 or len(trace) == num_steps):
                ckpt.save(trace, optim, plateau, done=stop or len(trace) == num_steps)
            if stop:
                break
    if guide == "laplace":
        q = q.laplace_approximation()
    return q, trace


WINDOW = 100  # steps per window of the convergence rule
ANNEAL = 1000  # fewest steps of its final anneal
PATIENCE = 3  # windows in a row without a better mean ELBO that end the search


class Checkpoint:
    """An SVI run's state in one file (torch's format, loaded with ``weights_only=True``: no
    pickled code). The parameters are stored unconstrained, as the optimiser sees them."""

    def __init__(self, path: str, key: str) -> None:
        self.path, self.key = Path(path), key

    def save(self, trace: list[float], optim: ClippedAdam, plateau: _Schedule | None, done: bool) -> None:
        store = pyro.get_param_store()
        rng = pyro.util.get_rng_state()
        state = {
            "key": self.key, "trace": list(trace), "done": done,
            "params": {k: store._params[k].detach().clone() for k in store},
            "optim": optim.get_state(),
            "plateau": plateau.state() if plateau else [],
            "rng_torch": rng["torch"],
            "rng_numpy": [rng["numpy"][0], torch.from_numpy(rng["numpy"][1].astype(np.int64)), *rng["numpy"][2:]],
            "rng_random": [rng["random"][0], list(rng["random"][1]), rng["random"][2]],
        }
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))

    def restore(self, optim: ClippedAdam, plateau: _Schedule | None) -> tuple[list[float], bool]:
        """Load the state into the param store, ``optim`` and ``plateau``; returns (trace, done)."""
        state = torch.load(self.path, weights_only=True)
        if state["key"] != self.key:
            raise ZooError(f"checkpoint {str(self.path)!r} was made by another run (other model, data, "
                           "options or seed); use another path or delete it")
        store = pyro.get_param_store()
        with torch.no_grad():
            for k, v in state["params"].items():
                store._params[k].copy_(v)
        optim.set_state(state["optim"])
        if plateau:
            plateau.load(state["plateau"])
        numpy_state = state["rng_numpy"]
        pyro.util.set_rng_state({
            "torch": state["rng_torch"],
            "numpy": (numpy_state[0], numpy_state[1].numpy().astype(np.uint32), *numpy_state[2:]),
            "random": (state["rng_random"][0], tuple(state["rng_random"][1]), state["rng_random"][2]),
        })
        return list(state["trace"]), bool(state["done"])


class _Schedule:
    """The convergence rule: a constant learning rate until the mean ELBO over a window of
    `WINDOW` steps has failed `PATIENCE` times in a row to beat the best window (or half the
    step cap is spent), then a geometric anneal to ``floor`` over as many steps again (at
    least `ANNEAL`), then stop. The anneal is what makes the guide's scales settle: stopping
    at the plateau leaves them noisy (sd ratio 1.12 on ``beta_bernoulli``, measured)."""

    def __init__(self, lr: float, floor: float, cap: int) -> None:
        self.lr, self.floor, self.cap = lr, floor, cap
        self.best, self.anneal_start, self.anneal_steps, self.worse = -math.inf, -1, 0, 0

    def state(self) -> list[float]:
        return [self.best, self.anneal_start, self.anneal_steps, self.worse]

    def load(self, state: list[float]) -> None:
        self.best, self.anneal_start, self.anneal_steps, self.worse = state[0], int(state[1]), int(state[2]), int(state[3])

    def stop(self, optim: ClippedAdam, trace: list[float]) -> bool:
        """Update the learning rate after a step; True when training is done."""
        n = len(trace)
        if self.anneal_start < 0:
            if n % WINDOW or n < WINDOW:
                return False
            mean = float(np.mean(trace[-WINDOW:]))
            self.worse = 0 if mean > self.best else self.worse + 1
            self.best = max(self.best, mean)
            if self.worse < PATIENCE and n < self.cap // 2:
                return False
            self.anneal_start, self.anneal_steps = n, min(max(ANNEAL, n), self.cap - n)
        done = n - self.anneal_start
        rate = self.lr * (self.floor / self.lr) ** min(1.0, done / max(1, self.anneal_steps))
        for opt in optim.optim_objs.values():
            for group in opt.param_groups:
                group["lr"] = rate
        return done >= self.anneal_steps


def elbo_estimate(problem: Problem, guide: Any, num: int) -> tuple[float, float, float]:
    """Monte Carlo ELBO, importance-weighted log evidence and the guide's Pareto k, from the
    importance ratios p(data, z) / q(z) of ``num`` guide draws z.

    The Pareto k of the ratios' tail is Yao et al.'s (2018) diagnostic of the guide against
    the model: below 0.5 the guide covers the posterior well, above 0.7 it is too narrow or
    misplaced somewhere the posterior has mass.
    """
    log_w, _ = importance_weights(problem, guide, num)
    return float(log_w.mean()), float(np.logaddexp.reduce(log_w) - math.log(num)), arviz_io.pareto_k(log_w)


def fit(problem: Problem, *, seed: int, guide: str, num_steps: int, lr: float, lr_decay: float,
        converge: bool, checkpoint: str, checkpoint_every: int, num_particles: int, num_samples: int, num_chains: int, num_elbo_particles: int,
        progress: bool | None) -> Fit:
    """Fit the guide, then draw ``num_chains x num_samples`` samples from it."""
    q, trace = train(problem, guide=guide, seed=seed, num_steps=num_steps, lr=lr, lr_decay=lr_decay,
                     num_particles=num_particles, progress=progress, converge=converge,
                     checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    draws = complete_draws(problem, sample_vectorised(problem, q, num_chains * num_samples))
    diagnostics: dict[str, Any] = {"elbo_trace": trace, "steps": len(trace), "guide": guide}
    if guide == "delta":
        diagnostics["note"] = "MAP point estimate: no spread, no ELBO"
    else:
        diagnostics["elbo"], diagnostics["iwae"], diagnostics["pareto_k"] = elbo_estimate(problem, q, num_elbo_particles)
    return Fit(posterior=to_chains(draws, num_chains), diagnostics=diagnostics,
               kind="point" if guide == "delta" else "independent")


SVI_OPTIONS: dict[str, Any] = {
    "guide": "mean_field", "num_steps": 5000, "lr": 0.05, "lr_decay": 0.02, "converge": True,
    "checkpoint": "", "checkpoint_every": 100, "num_particles": 1,
    "num_samples": 1000, "num_chains": 4, "num_elbo_particles": 2000, "progress": None,
}

BACKEND = Backend(
    name="svi",
    fit=fit,
    options=SVI_OPTIONS,
    choices={"guide": tuple(GUIDES)},
    summary="stochastic variational inference; guide families " + ", ".join(GUIDES),
    applicable=needs_continuous,
)

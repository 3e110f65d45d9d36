"""Back-end ``svi``: stochastic variational inference with a choice of guide family.

Guides (CONCEPTS.md E): ``mean_field`` (AutoNormal), ``diag`` (AutoDiagonalNormal),
``full_rank`` (AutoMultivariateNormal), ``low_rank`` (AutoLowRankMultivariateNormal), ``flow``
(a standard normal through RealNVP affine coupling layers, `inference.flows`, 004 3.6),
``delta`` (AutoDelta: the MAP point estimate, 004 2.1.4) and ``laplace``
(AutoLaplaceApproximation: a Gaussian at the MAP with the inverse Hessian as covariance). A
model may add its own guide families (an amortised encoder) in its spec's ``guides``.
Discrete latent sites are summed out exactly (TraceEnum_ELBO, the guide covering the
continuous sites only) and their draws rebuilt with ``infer_discrete``. By default training
stops by the convergence rule of `fit_guide` (``num_steps`` is a cap); the ELBO is re-estimated
at the end with many draws of the guide. By default a Gaussian guide (``mean_field``,
``diag``, ``full_rank``) starts at the Laplace approximation (of the marginal posterior where
discrete sites are summed out) and moves in the Laplace covariance's whitened coordinates
(`inference.laplace`); the diagnostics' ``start`` says where it started and, if the Laplace
start was refused, why. A model's own start (``Backends.start``: EM for ``mixture_ppca``)
takes precedence.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer import autoguide as ag
from pyro.infer.autoguide.initialization import init_to_value
from pyro.optim import PyroOptim
from pyro.optim.clipped_adam import ClippedAdam as TorchClippedAdam
from tqdm.auto import tqdm

from zoo.core import arviz_io
from zoo.core.errors import InferenceError, ZooError
from zoo.core.files import atomic_write
from zoo.core.problem import Problem
from zoo.core.spec import Backend, Fit
from zoo.inference.common import (
    complete_draws,
    elbo_for,
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
from zoo.inference.laplace import WARM_GUIDES, Laplace, WhitenedMultivariateNormal, guide_model, laplace, warm

GUIDES = {
    "mean_field": ag.AutoNormal,
    "diag": ag.AutoDiagonalNormal,
    "full_rank": ag.AutoMultivariateNormal,
    "low_rank": ag.AutoLowRankMultivariateNormal,
    "flow": coupling_guide,
    "delta": ag.AutoDelta,
    "laplace": ag.AutoLaplaceApproximation,
}


def fit_guide(problem: Problem, *, guide: str, seed: int, num_steps: int, lr: float, lr_decay: float,
          num_particles: int, progress: bool | None, converge: bool = True, checkpoint: str = "",
          checkpoint_every: int = 100, model: Callable[..., Any] | None = None,
          average: Callable[[torch.Tensor], None] | None = None, jit: bool = False) -> Trained:
    """Fit a guide of family ``guide`` by maximising the ELBO.

    ``converge=True``: the convergence rule of `Schedule`: Adam at ``lr`` until the windowed
    ELBO stops improving, then steps measured in the guide's own sds, and the run ends when
    the averaged iterates stay put to within `TOLERANCE` guide sds; ``num_steps`` caps the
    whole. Easy posteriors stop early, slow ones run longer, and the steps used are reported.
    A Gaussian guide (`laplace.WARM_GUIDES`) starts at the Laplace approximation found from
    the optimiser's start (`laplace.laplace`, discrete sites summed out; refused, with the
    reason in `Trained.start`, where there is no proper mode) and skips the search; it
    moves in the whitened coordinates of the Laplace covariance (a full-rank guide is written
    in them, `laplace.WhitenedMultivariateNormal`; a mean-field guide's locations are stepped
    in them by `Adam`'s ``whiten``), so strong correlations no longer slow it. On
    ``gaussian_mixture`` (enumerated assignments) that took 2700 steps where the search from
    the best prior draw took 6100, to the same log-likelihood. A model's own start
    (``Backends.start``) is kept as it is, without the Laplace step: on ``mixture_ppca``, from
    EM's estimate, the Laplace start left the mean-field guide 56 of its sds from its optimum
    in W (a mean-field guide shrinks W against z; the MAP does not), and the run took the whole
    10000-step cap where EM's start alone converged in 9200 steps.
    ``converge=False``: exactly ``num_steps`` steps with the rate decaying geometrically to
    ``lr * lr_decay``.

    ``jit=True``: Pyro's compiled ELBO (``JitTrace_ELBO``, ``JitTraceEnum_ELBO``), traced once
    by ``torch.jit``: the same estimator, fewer Python calls a step (with the assignments
    enumerated: 4.7 against 8.8 ms a step on ``mixture_ppca``, the same steps to converge). The
    trace freezes Python control flow, so a model must not branch on a latent value (``if
    mu > 0:``); the catalogue's models that were read for it set it in their ``Backends.options``
    (`JIT_ELBO`, `JIT_ELBO_ENUM`).

    ``checkpoint`` (a file path): every ``checkpoint_every`` steps the guide's parameters, the
    optimiser's state, the schedule's state, the random number generators' state and the ELBO
    trace are written there atomically; a re-run with the same settings resumes from it
    bit-identically (and a finished run's checkpoint returns the trained guide at once). A
    killed run loses at most ``checkpoint_every`` steps.

    ``model`` replaces ``problem.model`` in the ELBO (data-parallel SVI: this process's shard
    of the data, its likelihood scaled up); the starting values and the checkpoint's key still
    come from ``problem``. ``average(tensor)`` replaces a tensor in place by its mean over
    processes: every gradient before each optimiser step, and every step's loss.

    Returns
    -------
    Trained
        the guide, the ELBO trace and whether the rule judged the fit converged.

    Raises
    ------
    InferenceError
        when the ELBO becomes NaN or infinite, naming the step.
    """
    seed_all(seed)
    pyro.clear_param_store()
    model = model or problem.model
    start: Laplace | str = ""  # the Laplace start, or why it was refused ("": not tried)
    whiten = None  # a mean-field guide's locations step in the Laplace start's whitened coordinates
    if guide in problem.spec.backends.guides:  # the model's own guide (an amortised encoder)
        q = problem.spec.backends.guides[guide](problem)
    else:  # an autoguide over the continuous sites; the discrete ones are enumerated
        values = optimiser_start(problem, seed)
        if converge and GUIDES[guide] in WARM_GUIDES and problem.spec.backends.start is None:
            start = laplace(problem, values)
        guided = guide_model(problem, model)
        if not isinstance(start, Laplace):
            q = GUIDES[guide](guided, init_loc_fn=init_to_value(values=values))
        elif guide == "full_rank":
            q = WhitenedMultivariateNormal(guided, start)
        else:
            q = GUIDES[guide](guided, init_loc_fn=init_to_value(values=start.values))
            with poutine.block(), torch.no_grad():
                q()
            warm(q, start)
            whiten = (gaussian_parts(q)()[0], start.scale_tril)
    warmed = isinstance(start, Laplace)
    # from the Laplace start the first step waits for the rule's rates (in guide sds)
    args = {"lr": 0.0 if warmed else lr, "lrd": 1.0 if converge else lr_decay ** (1 / num_steps)}
    optim = Adam(args, average, whiten)
    schedule = Schedule(lr, lr * lr_decay, num_steps, gaussian_parts(q), search=not warmed) if converge else None
    elbo = elbo_for(problem, jit=jit, num_particles=num_particles, vectorize_particles=num_particles > 1)
    objective = enumerated(problem, model)
    svi = SVI(objective, q, optim, elbo)
    trace: list[float] = []
    ckpt = Checkpoint(checkpoint, run_key(problem, {
        "guide": guide, "seed": seed, "num_steps": num_steps, "lr": lr, "lr_decay": lr_decay,
        "num_particles": num_particles, "converge": converge,
        **({"jit": True} if jit else {})})) if checkpoint else None
    done = False
    if ckpt is not None and ckpt.path.exists():
        with poutine.block(), torch.no_grad():
            q()  # creates the guide's parameters, to be overwritten by the checkpoint's
        if jit:  # compile first: tracing draws random numbers the restored generators must not give
            with pyro.validation_enabled(False):
                elbo.differentiable_loss(objective, q)
        trace, done = ckpt.restore(optim, schedule)
    with pyro.validation_enabled(False):
        for step in tqdm(range(len(trace), num_steps if not done else 0), desc=f"svi {guide}",
                         disable=not progress, leave=False):
            loss = svi.step()
            if average is not None:
                total = torch.tensor([loss], dtype=torch.float64)
                average(total)
                loss = float(total)
            if not math.isfinite(loss):
                hint = (f"try a smaller lr (was {lr})" if math.isnan(loss) else
                        "a guide draw fell where the model has zero density: the posterior's "
                        "support is narrower than the guide's (a Uniform(0, theta) likelihood "
                        "needs theta > max x), so KL(q || p) is infinite")
                raise InferenceError(f"model {problem.name!r}, back-end 'svi' (guide {guide!r}): "
                                     f"the ELBO became {-loss} at step {step}; {hint}")
            trace.append(-loss)
            stop = bool(schedule and schedule.stop(optim, trace))
            if ckpt is not None and (stop or len(trace) % checkpoint_every == 0 or len(trace) == num_steps):
                ckpt.save(trace, optim, schedule, done=stop or len(trace) == num_steps)
            if stop:
                break
    if schedule is not None and not schedule.converged:
        schedule.finish()  # at the step cap: the average of the kept iterates, not the last one
    if guide == "laplace":
        q = q.laplace_approximation()
    return Trained(q, trace, schedule.converged if schedule else None,
                   {"jitter": schedule.jitter, "disagreement": schedule.disagreement, "final_rate": schedule.rate,
                    "final_scale_rate": schedule.scale_rate} if schedule else {},
                   "laplace" if warmed else f"best prior draw ({start})" if start else "")


def train(problem: Problem, **options: Any) -> tuple[Any, list[float]]:
    """`fit_guide` for callers that need only the guide and the ELBO trace (``enum``,
    ``importance``); the same options."""
    trained = fit_guide(problem, **options)
    return trained.guide, trained.trace


@dataclass
class Trained:
    """A fitted guide and how its training went.

    Attributes
    ----------
    guide : the trained guide (for ``laplace``, the Gaussian at the MAP).
    trace : the ELBO at every step.
    converged : whether the convergence rule stopped the run before the step cap; None with
        ``converge=False`` (a fixed schedule, not judged).
    measures : the rule's last ``jitter`` (the largest in its limit) and ``disagreement``
        (in each parameter's tolerance: a location's in guide sds, see `Schedule`),
        ``final_rate`` (Adam's rate at the end; for a Gaussian guide's locations, in guide
        sds per step) and ``final_scale_rate`` (that of its other parameters).
    start : ``"laplace"`` (the Laplace start), ``"best prior draw (<why the Laplace start was
        refused>)"``, or empty where the Laplace start does not apply (other guide families,
        a model's own start, a fixed schedule).
    """

    guide: Any
    trace: list[float]
    converged: bool | None
    measures: dict[str, float] = field(default_factory=dict)
    start: str = ""


WINDOW = 100  # steps per window of the convergence rule
ANNEAL = 1000  # fewest steps of the final anneal for guides without locations and scales
PATIENCE = 3  # windows in a row without a better mean ELBO that end the search
TOLERANCE = 0.2  # how far apart the two halves of the averaged locations may be, in guide sds
SCALE_TOLERANCE = 0.1  # the same for the other parameters (log scales: 10 % of the scale)
STANDARD_ERRORS = 4  # a tolerance holds this many standard errors of the averaged iterates
JITTER = 2.5  # the most a location may jitter within a window before a cut, in its tolerances
SCALE_JITTER = 0.03  # the most any other parameter (a log scale) may jitter within a window
SETTLE = 2  # windows in a row within tolerance that end the run
STALL = 10  # windows without settling after which the scales' rate may be cut (Laplace start)
SLOWEST = 0.2 / WINDOW  # the lowest rate: every parameter can still move 0.2 a window


def gaussian_parts(q: Any) -> Callable[[], tuple[list[torch.Tensor], list[torch.Tensor]]] | None:
    """``parts() -> (locs, scales)`` of a Gaussian guide: its location parameters (the
    tensors the optimiser steps) and their marginal sds on the unconstrained scale, shaped
    alike; None for a guide family without them (``delta``, ``laplace`` during its MAP fit,
    ``flow``, a model's amortised guide)."""
    if isinstance(q, ag.AutoNormal):
        def parts() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            names = [name for name, _ in q.prototype_trace.iter_stochastic_nodes()]
            return [attrgetter(n)(q.locs) for n in names], [attrgetter(n)(q.scales).detach() for n in names]
        return parts
    if isinstance(q, WhitenedMultivariateNormal):  # its locations live in whitened coordinates
        def whitened() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            with torch.no_grad():
                return [q.loc], [q.whitened_sds()]
        return whitened
    if isinstance(q, (ag.AutoDiagonalNormal, ag.AutoMultivariateNormal, ag.AutoLowRankMultivariateNormal)):
        def parts() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            with torch.no_grad():
                return [q.loc], [q.get_posterior().variance.sqrt()]
        return parts
    return None


class Schedule:
    """The convergence rule of `fit_guide`: it sets Adam's rate after every step and says
    when to stop.

    1. Search: Adam at the rate ``lr`` until the mean ELBO over a window of `WINDOW` steps
       has failed `PATIENCE` times in a row to beat the best window (or half the step cap is
       spent).
    2. Settle, for a Gaussian guide (``parts`` given). Adam moves a parameter by about its
       rate at every step whatever the posterior's scale, so a rate fixed in absolute terms
       leaves a location jittering by many posterior sds where the posterior is narrow
       (sblrc-blr: sd 0.001 against a final rate 0.001 left the means 0.93 sd off), while a
       rate small enough for the narrowest location freezes every wider one. So from here
       each location steps in units of its own guide sd (its Adam step is multiplied by its
       scale, capped at ``lr``), and the other parameters (the scales, unconstrained, about
       their logarithm) in their own units; every parameter is measured in those units
       too. The locations' rate starts where every location still moves by ``lr`` a step
       and is cut (2 to 10 times, never below `SLOWEST`) while a location jitters within a
       window (its sd about its linear trend there) by more than `JITTER` tolerances (0.5
       guide sds). The other parameters (log scales) start at ``lr``; when the run has
       settled (below) while one of them still jitters by more than `SCALE_JITTER`, their
       rate is cut (by the square of the excess: jitter goes with the rate's square root)
       and the run settles again. The
       scales need the smaller rate: the gradient noise of a log scale grows with the scale,
       so at a fixed rate its iterates hover below the optimum (sblrc-blr, full-rank: at one
       rate 0.035 for both, the rule's earlier form, the beta sds ended 5-8 % short, sd
       ratios 0.89-0.94 over seeds 0-4, against a full-rank optimum 1-1.5 % short; with
       the scales' rate cut to 0.005, 0-5 % short). Cutting the scales' rate before they
       have settled leaves them creeping (a normal mean's guide sd ended 10 % wide). Then the
       iterates are read as
       a Markov chain around the optimum (after Dhaka et al. 2020, "Robust, accurate
       stochastic optimization for variational inference"): one-draw gradients are noisy,
       and where the posterior is correlated the locations only creep towards the optimum,
       so neither the last iterate nor its drift over one window says where the optimum
       is. The window means since the last cut are kept, their first half dropped as
       burn-in. The rest is judged in each parameter's tolerance (`TOLERANCE` guide sds for
       a location, `SCALE_TOLERANCE` for every other parameter) by two measures, the larger
       of which is the ``disagreement``: the difference of its two halves' means (a trend)
       and `STANDARD_ERRORS` standard errors of the overall mean (the window means' spread
       over the square root of their number). When it is at most 1 for every parameter,
       `SETTLE` windows in a row, the guide's parameters are set to their mean over the kept
       windows (iterate averaging) and the run ends (``converged``). The halves alone were
       not enough: two halves of two noisy windows agree by chance, and a conjugate normal
       mean's guide sd ended 5-6 % off (seeds 0 to 3, sd ratio 1.10 with 500 draws); with
       the standard error it ends within 3 %. Guide sds are at most the posterior's where a
       mean-field guide is too narrow, so the rule errs on the strict side there. At the
       step cap the average is taken all the same, and ``converged`` stays False. Where the
       posterior's correlations are extreme (near -0.99999) a mean-field guide's locations
       barely move along the ridge and the rule can judge them settled far from the
       optimum: the guide's Pareto k (above 0.7) is what shows it.
    3. Without ``parts`` (MAP, flows, amortised guides): a geometric anneal to ``floor``
       over as many steps as the search took (at least `ANNEAL`), then stop (``converged``
       unless the cap cut it short). The anneal is what makes scales settle: stopping at the
       plateau leaves them noisy (sd ratio 1.12 on ``beta_bernoulli``, measured).

    From the Laplace start (``search=False``) step 1 is skipped: the first step waits at
    rate 0 for the rule's rates, and the locations step ``lr`` in whitened Laplace sds (a
    full-rank guide is written in those coordinates, `laplace.WhitenedMultivariateNormal`; a
    mean-field guide's locations are stepped in them by `Adam`'s ``whiten``), with no
    element-wise ``step_scale``. Where the run has not settled `STALL` windows after the last
    cut while a scale still jitters beyond `SCALE_JITTER`, the scales' rate is cut without
    waiting for it to settle. The scales start near their optimum, so an early cut does not
    leave them creeping far (a cut at every window from the start left beta_bernoulli's sd
    12 % wide); without it, before the full-rank guide was whitened, kidscore_interaction's
    full-rank factor jittered at the rate ``lr`` up to the step cap. It stays as a safety valve.
    """

    def __init__(self, lr: float, floor: float, cap: int,
                 parts: Callable[[], tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None,
                 search: bool = True) -> None:
        self.lr, self.floor, self.cap, self.parts, self.search = lr, floor, cap, parts, search
        self.rate, self.scale_rate, self.best, self.worse, self.settled = lr, lr, -math.inf, 0, 0
        self.anneal_start, self.anneal_steps = -1, 0
        self.converged = False
        self.jitter, self.disagreement = math.inf, math.inf
        self.leaves: list[torch.Tensor] = []  # the guide's parameters, unconstrained, in name order
        self.window: list[torch.Tensor] = []  # this window's parameters, flattened, step by step
        self.means: list[torch.Tensor] = []  # window means since the last cut

    def state(self) -> dict[str, Any]:
        return {"numbers": [self.rate, self.best, self.worse, self.settled, self.anneal_start,
                            self.anneal_steps, self.jitter, self.disagreement, self.scale_rate],
                "converged": self.converged,
                "window": torch.stack(self.window) if self.window else torch.zeros(0),
                "means": torch.stack(self.means) if self.means else torch.zeros(0)}

    def load(self, state: dict[str, Any]) -> None:
        n = state["numbers"]
        self.rate, self.best, self.jitter, self.disagreement = n[0], n[1], n[6], n[7]
        self.worse, self.settled, self.anneal_start, self.anneal_steps = (int(x) for x in n[2:6])
        self.scale_rate = n[8]
        self.converged = bool(state["converged"])
        self.window = list(state["window"].unbind(0)) if state["window"].numel() else []
        self.means = list(state["means"].unbind(0)) if state["means"].numel() else []

    def stop(self, optim: PyroOptim, trace: list[float]) -> bool:
        """Set the learning rate after a step; True when training is done."""
        n = len(trace)
        if self.parts is not None:
            if not self.leaves:
                self.leaves = [v for _, v in sorted(pyro.get_param_store().named_parameters())]
            self.window.append(torch.cat([v.detach().reshape(-1) for v in self.leaves]).double())
        if self.anneal_start < 0 and not self.search:  # from the Laplace start: lr guide sds a step
            self.anneal_start, self.anneal_steps = 0, min(ANNEAL, self.cap)
            self._set_rate(optim, self.lr, self.lr)
            self.window = []
            return False
        if self.anneal_start < 0:  # searching
            if n % WINDOW:
                return False
            mean = float(np.mean(trace[-WINDOW:]))
            self.worse = 0 if mean > self.best else self.worse + 1
            self.best = max(self.best, mean)
            self.window = []
            if self.worse < PATIENCE and n < self.cap // 2:
                return False
            self.anneal_start, self.anneal_steps = n, min(max(ANNEAL, n), self.cap - n)
            if self.parts is not None:  # every location still moves by lr a step; the cuts follow
                narrowest = min(float(s.min()) for s in self.parts()[1])
                self._set_rate(optim, self.lr / min(1.0, narrowest), self.lr)
            return False
        if self.parts is None:
            done = n - self.anneal_start
            self._set_rate(optim, self.lr * (self.floor / self.lr) ** min(1.0, done / max(1, self.anneal_steps)))
            self.converged = done >= self.anneal_steps and n < self.cap
            return done >= self.anneal_steps
        if n % WINDOW:
            return False
        x, (unit, tolerance, located) = torch.stack(self.window), self._units()
        self.window = []
        t = torch.arange(len(x), dtype=x.dtype) - (len(x) - 1) / 2
        centred = x - x.mean(0)
        slope = (t[:, None] * centred).sum(0) / (t**2).sum()
        # each parameter's jitter in its limit: JITTER tolerances for a location, SCALE_JITTER else
        excess = (centred - slope * t[:, None]).std(0) / unit / torch.where(
            located, JITTER * tolerance, torch.full_like(tolerance, SCALE_JITTER))
        self.jitter = float(excess.max())
        rate = slower(self.rate, float(torch.where(located, excess, 0.0).max()))
        # from the Laplace start, scales that keep the run from settling for STALL windows are
        # slowed without waiting for it to settle (see the class docstring)
        scale_rate = self.scale_rate if self.search or len(self.means) < STALL else slower(
            self.scale_rate, float(torch.where(located, 0.0, excess).max()) ** 2)
        if rate != self.rate or scale_rate != self.scale_rate:
            self._set_rate(optim, rate, scale_rate)
            self.means, self.settled = [], 0
            return False
        self.means.append(x.mean(0))
        kept = torch.stack(self.means[len(self.means) // 2:])
        if len(kept) < 4:
            return False
        # the disagreement in tolerances (1 is the limit): of the two halves (a trend), and of
        # STANDARD_ERRORS standard errors of the average (the window means' spread over sqrt K)
        half = len(kept) // 2
        drift = (kept[:half].mean(0) - kept[-half:].mean(0)).abs()
        error = STANDARD_ERRORS * kept.std(0) / math.sqrt(len(kept))
        self.disagreement = float((torch.maximum(drift, error) / unit / tolerance).max())
        self.settled = self.settled + 1 if self.disagreement <= 1 else 0
        if self.settled >= SETTLE:
            # settled at this rate; while the scales jitter by more than their limit, their
            # rate is cut (jitter goes as its square root) and they settle again
            scale_rate = slower(self.scale_rate, float(torch.where(located, 0.0, excess).max()) ** 2)
            if scale_rate != self.scale_rate:
                self._set_rate(optim, self.rate, scale_rate)
                self.means, self.settled = [], 0
                return False
            self.converged = True
            self.finish()
            return True
        return False

    def finish(self) -> None:
        """Set the guide's parameters to their mean over the kept windows (when there are at
        least two); called when the rule stops the run, and by `fit_guide` at the cap."""
        kept = self.means[len(self.means) // 2:]
        if len(kept) < 2 or not self.leaves:
            return
        average = torch.stack(kept).mean(0)
        with torch.no_grad():
            start = 0
            for v in self.leaves:
                v.copy_(average[start:start + v.numel()].reshape(v.shape).to(v.dtype))
                start += v.numel()

    def _units(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each flattened parameter's unit (a location's guide sd, 1 for everything else), its
        tolerance in those units (`TOLERANCE` for locations, else `SCALE_TOLERANCE`) and
        whether it is a location."""
        unit = torch.ones(sum(v.numel() for v in self.leaves), dtype=torch.float64)
        tolerance = torch.full_like(unit, SCALE_TOLERANCE)
        located = torch.zeros_like(unit, dtype=torch.bool)
        where = {id(v): start for v, start in zip(self.leaves, np.cumsum([0] + [v.numel() for v in self.leaves]))}
        for loc, scale in zip(*self.parts()):
            start = int(where[id(loc)])
            unit[start:start + loc.numel()] = scale.reshape(-1).double()
            tolerance[start:start + loc.numel()] = TOLERANCE
            located[start:start + loc.numel()] = True
        return unit, tolerance, located

    def _set_rate(self, optim: PyroOptim, rate: float, scale_rate: float | None = None) -> None:
        """Every parameter's rate, ``scale_rate`` (if given) for those that are not a Gaussian
        guide's locations; after the search, each location's steps in its guide sds."""
        self.rate = rate
        self.scale_rate = rate if scale_rate is None else scale_rate
        for opt in optim.optim_objs.values():
            for group in opt.param_groups:
                group["lr"] = min(self.scale_rate, self.lr)
        if self.parts is not None and self.anneal_start >= 0:
            for loc, scale in zip(*self.parts()):
                for group in optim.optim_objs[loc].param_groups:
                    group["lr"] = rate
                    # from the Laplace start the steps are whitened (`Adam`): in Laplace sds already
                    group["step_scale"] = scale.clamp(max=self.lr / rate) if self.search else None


def slower(rate: float, excess: float) -> float:
    """The rate after a window in which a parameter jittered by ``excess`` times its limit
    (for the scales, the square of that): unchanged up to 1 (or at `SLOWEST`), else cut 2 to
    10 times, never below `SLOWEST`."""
    if excess <= 1 or rate <= SLOWEST:
        return rate
    return max(SLOWEST, rate * max(0.1, min(0.5, 1 / (2 * excess))))


class ScaledClippedAdam(TorchClippedAdam):
    """Pyro's ClippedAdam (torch optimiser) whose update can be multiplied element by element
    by the tensor in a parameter group's ``step_scale`` (None: unchanged), which `Schedule`
    sets to a location's guide sds."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        for group in self.param_groups:
            group.setdefault("step_scale", None)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        scaled = [g for g in self.param_groups if g["step_scale"] is not None]
        before = [[p.detach().clone() for p in g["params"]] for g in scaled]
        loss = super().step(closure)
        with torch.no_grad():
            for group, old in zip(scaled, before):
                for p, p0 in zip(group["params"], old):
                    p.copy_(p0 + (p - p0) * group["step_scale"])
        return loss


class Adam(PyroOptim):
    """The optimiser of `fit_guide`: Pyro's ClippedAdam, one `ScaledClippedAdam` per
    parameter. With ``average`` (data-parallel SVI, `zoo.distributed`), every gradient is
    first replaced in place by its mean over processes, in one fixed order of the
    parameters' names, so that every process takes the same step.

    With ``whiten = (locs, C)`` (a Gaussian guide's location tensors in the Laplace
    approximation's order, and the Cholesky factor C of its covariance) the locations are
    stepped in whitened coordinates u (locations = start + C u): Adam sees the gradient
    C' g and its step du is applied as C du. On a Gaussian posterior that makes every
    direction equally easy, however strong the correlations (`inference.laplace`).
    """

    def __init__(self, optim_args: dict[str, Any], average: Callable[[torch.Tensor], None] | None = None,
                 whiten: tuple[list[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__(ScaledClippedAdam, optim_args)
        self.average, self.whiten = average, whiten

    def __call__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if self.average is not None:
            store = pyro.get_param_store()
            params = sorted(params, key=store.param_name)  # Pyro passes a set: its order differs by process
            for p in params:
                self.average(p.grad)
        if self.whiten is None:
            super().__call__(params, *args, **kwargs)
            return
        locs, tril = self.whiten
        with torch.no_grad():
            before = [p.detach().clone() for p in locs]
            whitened = tril.T @ torch.cat([p.grad.reshape(-1) for p in locs]).to(tril.dtype)
            for p, g in zip(locs, whitened.split([p.numel() for p in locs])):
                p.grad.copy_(g.reshape(p.shape))
        super().__call__(params, *args, **kwargs)
        with torch.no_grad():
            step = tril @ torch.cat([(p - p0).reshape(-1) for p, p0 in zip(locs, before)]).to(tril.dtype)
            for p, p0, d in zip(locs, before, step.split([p.numel() for p in locs])):
                p.copy_(p0 + d.reshape(p.shape).to(p.dtype))


class Checkpoint:
    """An SVI run's state in one file (torch's format, loaded with ``weights_only=True``: no
    pickled code). The parameters are stored unconstrained, as the optimiser sees them, read
    and written through the param store's public ``named_parameters``."""

    def __init__(self, path: str, key: str) -> None:
        self.path, self.key = Path(path), key

    def save(self, trace: list[float], optim: PyroOptim, schedule: Schedule | None, done: bool) -> None:
        rng = pyro.util.get_rng_state()
        state = {
            "key": self.key, "trace": list(trace), "done": done,
            "params": {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()},
            "optim": optim.get_state(),
            "schedule": schedule.state() if schedule else {},
            "rng_torch": rng["torch"],
            "rng_numpy": [rng["numpy"][0], torch.from_numpy(rng["numpy"][1].astype(np.int64)), *rng["numpy"][2:]],
            "rng_random": [rng["random"][0], list(rng["random"][1]), rng["random"][2]],
        }
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))

    def restore(self, optim: PyroOptim, schedule: Schedule | None) -> tuple[list[float], bool]:
        """Load the state into the param store, ``optim`` and ``schedule``; returns (trace, done)."""
        state = torch.load(self.path, weights_only=True)
        if state["key"] != self.key:
            raise ZooError(f"checkpoint {str(self.path)!r} was made by another run (other model, data, "
                           "options or seed); use another path or delete it")
        params = dict(pyro.get_param_store().named_parameters())
        with torch.no_grad():
            for k, v in state["params"].items():
                params[k].copy_(v)
        optim.set_state(state["optim"])
        if schedule:
            schedule.load(state["schedule"])
        numpy_state = state["rng_numpy"]
        pyro.util.set_rng_state({
            "torch": state["rng_torch"],
            "numpy": (numpy_state[0], numpy_state[1].numpy().astype(np.uint32), *numpy_state[2:]),
            "random": (state["rng_random"][0], tuple(state["rng_random"][1]), state["rng_random"][2]),
        })
        return list(state["trace"]), bool(state["done"])


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
        progress: bool | None, jit: bool) -> Fit:
    """Fit the guide, then draw ``num_chains x num_samples`` samples from it."""
    trained = fit_guide(problem, guide=guide, seed=seed, num_steps=num_steps, lr=lr, lr_decay=lr_decay,
                        num_particles=num_particles, progress=progress, converge=converge,
                        checkpoint=checkpoint, checkpoint_every=checkpoint_every, jit=jit)
    draws = complete_draws(problem, sample_vectorised(problem, trained.guide, num_chains * num_samples))
    return Fit(posterior=to_chains(draws, num_chains),
               diagnostics=training_diagnostics(problem, trained, guide, num_steps, num_elbo_particles),
               guide=trained.guide, kind="point" if guide == "delta" else "independent")


def training_diagnostics(problem: Problem, trained: Trained, guide: str, num_steps: int,
                         num_elbo_particles: int) -> dict[str, Any]:
    """What an SVI fit reports: the ELBO trace, steps, ``converged`` and the rule's last
    measures, the ELBO and IWAE bound from ``num_elbo_particles`` guide draws (not for MAP),
    and a ``note`` when training did not converge or gave a point estimate."""
    diagnostics: dict[str, Any] = {"elbo_trace": trained.trace, "steps": len(trained.trace), "guide": guide,
                                   "converged": trained.converged, **trained.measures}
    if trained.start:
        diagnostics["start"] = trained.start
    note = convergence_note(trained, num_steps)
    notes = [note] if note else []
    if guide == "delta":
        notes.append("MAP point estimate: no spread, no ELBO")
    else:
        diagnostics["elbo"], diagnostics["iwae"], diagnostics["pareto_k"] = elbo_estimate(
            problem, trained.guide, num_elbo_particles)
    if notes:
        diagnostics["note"] = "; ".join(notes)
    return diagnostics


def convergence_note(trained: Trained, num_steps: int) -> str:
    """What the table says about how training ended: nothing when the rule judged it
    converged; that it stopped at the cap unconverged; or that a fixed schedule was not judged."""
    if trained.converged is None:
        return f"fixed schedule of {num_steps} steps (converge=False): convergence not checked"
    if trained.converged:
        return ""
    m = trained.measures
    detail = ""
    if math.isfinite(m.get("disagreement", math.inf)):
        detail = (f": the two halves of its last iterates still differ by {m['disagreement']:.2g} times the "
                  f"tolerance ({TOLERANCE} guide sds for a location)")
    elif math.isfinite(m.get("jitter", math.inf)):
        detail = f": its parameters still jitter by {m['jitter']:.2g} times their limit within a window"
    return f"not converged: stopped at the step cap num_steps={num_steps}{detail}; raise num_steps"


JIT_ELBO: dict[str, dict[str, bool]] = {"svi": {"jit": True}, "importance": {"jit": True}}
"""``Backends.options`` for a model whose ELBO may be compiled (Pyro's ``JitTrace_ELBO``): one
that never branches in Python on a latent value (each model that carries it was read for this:
its branches test whether data were given, their type or their shape). Measured on the
catalogue's continuous models at the defaults (seconds of one svi run, seed 0, without / with):
normal_gamma 6.1 / 3.9, bayesian_linear_regression 3.8 / 2.3, beta_bernoulli 4.8 / 3.2,
poisson_gamma 3.1 / 1.8, mvn_wishart 5.4 / 3.7, dirichlet_categorical 4.8 / 3.2,
linear_gaussian_ssm 14.7 / 9.3, ppca 51 / 30 (both at the step cap), vae 47.5 / 21.4; steps to
converge within 100 of each other (the compiled run draws its random numbers in another order;
the vae's rule stopped at 2600 steps instead of 5200, both converged). Not for ``vrnn`` (71 / 156
s: its compiled graph of a Python loop over time runs slower) nor ``logistic_regression`` (its
minibatches draw their indices inside the model)."""

JIT_ELBO_ENUM: dict[str, dict[str, bool]] = {**JIT_ELBO, "enum": {"jit": True}}
"""`JIT_ELBO` for a model with enumerated discrete sites (Pyro's ``JitTraceEnum_ELBO``, for
enum too). Measured on the catalogue's mixtures: the same steps to converge, 1.75-1.9 times
faster a run."""


SVI_OPTIONS: dict[str, Any] = {
    "guide": "mean_field", "num_steps": 10000, "lr": 0.05, "lr_decay": 0.02, "converge": True,
    "checkpoint": "", "checkpoint_every": 100, "num_particles": 1,
    "num_samples": 1000, "num_chains": 4, "num_elbo_particles": 2000, "progress": None, "jit": False,
}


def refuses(problem: Problem, options: Mapping[str, Any]) -> str | None:
    """The ``laplace`` guide on a model with discrete sites: Pyro's ``laplace_approximation``
    forms its Hessian on a replay of the model that samples those sites instead of summing
    them out, the Hessian of another function (on gaussian_mixture it was not even positive
    definite)."""
    if options.get("guide") == "laplace" and problem.discrete_sites:
        return (f"guide 'laplace' (Pyro's laplace_approximation) samples the discrete sites "
                f"{', '.join(problem.discrete_sites)} where the Hessian needs them summed out; guide "
                "'full_rank' starts at the Laplace approximation of the marginal posterior")
    return None


BACKEND = Backend(
    name="svi",
    fit=fit,
    options=SVI_OPTIONS,
    choices={"guide": tuple(GUIDES)},
    summary="stochastic variational inference; guide families " + ", ".join(GUIDES),
    applicable=needs_continuous,
    refuses=refuses,
)

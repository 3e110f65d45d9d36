"""Multi-chain HMC and NUTS in plain torch: every chain advances in one batched computation.

Why: Pyro's NUTS spends its time in Python, not arithmetic (about 5 ms per gradient on a
two-parameter model, most of it tracing the model and building the tree one chain at a time).
Here the model is traced once per leapfrog step for *all* chains together (the chains are an
outer plate, as in `inference.common`), and the tree is built iteratively with the chains as
a batch dimension, so C chains cost about what one chain costs.

The sampler is the one Stan and NumPyro run:

- NUTS: multinomial sampling of the trajectory (uniform progressive sampling inside a new
  subtree, biased progressive sampling when it joins the tree), the generalised no-U-turn
  criterion on every sub-tree (checked iteratively with checkpoints of the momentum sums),
  a subtree with a U-turn or a divergence (energy error > 1000) is rejected and ends the
  trajectory; maximum tree depth ``max_tree_depth``. Chains whose trajectory has ended wait
  (masked) while the others go on.
- HMC: ``num_leapfrog`` steps and a Metropolis correction.
- Warm-up as in Stan: step size by dual averaging (Hoffman and Gelman 2014) towards
  ``target_accept``; the inverse mass matrix (diagonal, or dense with ``dense_mass``) from
  the draws of doubling windows (75 / 25, 50, ... / 50 iterations, scaled down for short
  warm-ups), regularised towards 1e-3 as Stan does, and the step size re-initialised after
  each window. Each chain adapts on its own.

Positions live in the unconstrained space (`torch.distributions.biject_to` of each site's
support); coordinates an unconstraining transform ignores (the upper triangle of a
lower-Cholesky parametrisation) are dropped, since they would be flat directions.

Applies to models whose latent sites are all continuous and which broadcast against an
outer plate; `BatchedPotential.build` returns a reason otherwise, and the back-end then runs
Pyro's own kernel one chain at a time.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro import poutine
from torch.distributions import biject_to

from zoo.core.problem import DTYPE, Problem, traceable
from zoo.inference.common import padded, vectorised_over

MAX_ENERGY_ERROR = 1000.0


@dataclass
class _Block:
    """One latent site's slice of the flat unconstrained vector."""

    name: str
    transform: torch.distributions.Transform
    shape: tuple[int, ...]           # constrained value shape
    ushape: tuple[int, ...]          # unconstrained shape
    used: torch.Tensor | None        # indices of the unconstrained coordinates kept (None: all)
    size: int                        # number of coordinates kept


@dataclass
class BatchedPotential:
    """U(z) = -log p(data, x(z)) - log|dx/dz| for a batch of unconstrained positions z (C, D)."""

    problem: Problem
    blocks: list[_Block]
    dim: int
    jit: bool = False
    evaluations: int = 0
    _traced: dict[int, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, problem: Problem, jit: bool = True) -> BatchedPotential | str:
        """The potential of ``problem``'s model, or the reason the batched sampler cannot run it.

        With ``jit`` the log density is traced once per number of chains with
        ``torch.jit.trace`` (its deprecation warning silenced) and replayed as a graph: the
        model's Python code runs once instead of at every leapfrog step (measured: half the
        time per step on normal_gamma). A trace that disagrees with the model at a second
        point (Python branching on a value) is dropped for the eager code.
        """
        if problem.discrete_sites:
            return f"discrete latent sites ({', '.join(problem.discrete_sites)}) are summed out by Pyro's kernel"
        with torch.no_grad(), pyro.validation_enabled(False):
            tr = poutine.trace(traceable(problem.model)).get_trace()  # flat priors are not sampled
        blocks = []
        for name in problem.sites:
            value = tr.nodes[name]["value"].detach().to(DTYPE)
            transform = biject_to(tr.nodes[name]["fn"].support)
            u = transform.inv(value)
            m = u.numel()
            probe = u.reshape(1, m) + torch.eye(m, dtype=DTYPE)  # move one coordinate at a time
            moved = transform(probe.reshape((m,) + u.shape)).reshape(m, -1)
            used = (moved - transform(u).reshape(1, -1)).abs().amax(1) > 0
            idx = None if bool(used.all()) else torch.nonzero(used).flatten()
            blocks.append(_Block(name, transform, tuple(value.shape), tuple(u.shape), idx, int(used.sum())))
        pot = cls(problem, blocks, sum(b.size for b in blocks), jit)
        try:
            z = pot.unconstrain({k: tr.nodes[k]["value"].detach().to(DTYPE).expand((2,) + b.shape)
                                 for k, b in zip(problem.sites, blocks)})
            u, _ = pot(z)
            if u.shape != (2,):
                return f"the model's log density did not broadcast over chains (shape {tuple(u.shape)})"
        except (RuntimeError, ValueError) as e:
            return f"the model does not broadcast against an outer plate of chains ({e})"
        pot.evaluations = 0
        return pot

    def _split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Unconstrained values (C, *ushape) of each site from flat positions (C, D)."""
        out, start = [], 0
        for b in self.blocks:
            part = z[:, start:start + b.size]
            start += b.size
            if b.used is not None:
                full = z.new_zeros((z.shape[0], math.prod(b.ushape)))
                part = full.index_copy(1, b.used, part)
            out.append(part.reshape((z.shape[0],) + b.ushape))
        return out

    def constrain(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Site values (C, *shape) at positions z (C, D)."""
        return {b.name: b.transform(u) for b, u in zip(self.blocks, self._split(z))}

    def unconstrain(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flat positions (C, D) of site values (C, *shape)."""
        parts = []
        for b in self.blocks:
            u = b.transform.inv(values[b.name].to(DTYPE))
            u = u.reshape(u.shape[0], -1)
            parts.append(u if b.used is None else u[:, b.used])
        return torch.cat(parts, 1)

    def _log_density(self, z: torch.Tensor, vectorised: bool) -> torch.Tensor:
        n = z.shape[0]
        total = z.new_zeros(n)
        values = {}
        for b, u in zip(self.blocks, self._split(z)):
            x = b.transform(u)
            total = total + b.transform.log_abs_det_jacobian(u, x).reshape(n, -1).sum(1)
            values[b.name] = padded(self.problem, b.name, x) if vectorised else x[0]
        model = poutine.condition(self.problem.model, values)
        with vectorised_over(self.problem, n) if vectorised else nullcontext():
            tr = poutine.trace(model).get_trace()
        for site in tr.nodes.values():
            if site["type"] == "sample":
                lp = site["fn"].log_prob(site["value"])
                scale, mask = site["scale"], site["mask"]
                lp = lp * scale if mask is None else torch.where(torch.as_tensor(mask), lp * scale, 0.0)
                if not vectorised:
                    lp = lp.unsqueeze(0)
                total = total + lp.expand((n,) + lp.shape[1:]).reshape(n, -1).sum(1) \
                    if lp.dim() else total + lp
        return total

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Potential energy (C,) and its gradient (C, D); inf and zero gradient where the
        density is zero or its evaluation fails (a Cholesky factor of an overflowing matrix)."""
        self.evaluations += 1
        z = z.detach().requires_grad_(True)
        with pyro.validation_enabled(False):
            try:
                u = -self._compiled(z.shape[0])(z)
                grad, = torch.autograd.grad(u.sum(), z)
            except (RuntimeError, ValueError):  # one chain's failure must not stop the others
                u, grad = self._one_by_one(z.detach())
        bad = ~torch.isfinite(u) | ~torch.isfinite(grad).all(1)
        u = torch.where(bad, torch.inf, u.detach())
        return u, torch.where(bad[:, None], 0.0, grad)

    def _compiled(self, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The log density for ``n`` chains: traced with torch.jit under ``jit``, else eager."""
        def eager(z: torch.Tensor) -> torch.Tensor:
            return self._log_density(z, vectorised=True)

        if not self.jit:
            return eager
        if n not in self._traced:
            self._traced[n] = eager
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    traced = torch.jit.trace(eager, torch.zeros(n, self.dim, dtype=DTYPE), check_trace=False)
                    probe = torch.randn(n, self.dim, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
                    same = torch.allclose(traced(probe), eager(probe), rtol=1e-10, atol=1e-10, equal_nan=True)
                except (RuntimeError, ValueError):
                    same = False
            if same:  # a trace that disagrees with the model at a second point keeps the eager code
                self._traced[n] = traced
        return self._traced[n]

    def _one_by_one(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        us, grads = [], []
        for row in z:
            zi = row[None].clone().requires_grad_(True)
            try:
                u = -self._log_density(zi, vectorised=True)
                g, = torch.autograd.grad(u.sum(), zi)
                us.append(u.detach())
                grads.append(g)
            except (RuntimeError, ValueError):
                us.append(z.new_full((1,), math.inf))
                grads.append(torch.zeros_like(zi))
        return torch.cat(us), torch.cat(grads)


# ----------------------------------------------------------------------------- dynamics


@dataclass
class Metric:
    """The inverse mass matrix of each chain: (C, D) diagonal or (C, D, D) dense."""

    inverse: torch.Tensor

    @property
    def dense(self) -> bool:
        return self.inverse.dim() == 3

    def velocity(self, p: torch.Tensor) -> torch.Tensor:
        return (self.inverse @ p[..., None])[..., 0] if self.dense else self.inverse * p

    def kinetic(self, p: torch.Tensor) -> torch.Tensor:
        return 0.5 * (p * self.velocity(p)).sum(-1)

    def momentum(self, gen: torch.Generator, shape: torch.Size) -> torch.Tensor:
        eps = torch.randn(shape, generator=gen, dtype=DTYPE)
        if self.dense:  # p ~ N(0, M) with M = inverse^-1: p = L^-T eps, inverse = L L^T
            chol = torch.linalg.cholesky(self.inverse)
            return torch.linalg.solve_triangular(chol.mT, eps[..., None], upper=True)[..., 0]
        return eps / self.inverse.sqrt()


@dataclass
class State:
    """Positions, potential and gradient of every chain."""

    z: torch.Tensor
    u: torch.Tensor
    grad: torch.Tensor

    def where(self, mask: torch.Tensor, other: State) -> State:
        """This state where ``mask``, ``other`` elsewhere."""
        m = mask[:, None]
        return State(torch.where(m, self.z, other.z), torch.where(mask, self.u, other.u),
                     torch.where(m, self.grad, other.grad))


def leapfrog(pot: BatchedPotential, s: State, p: torch.Tensor, step: torch.Tensor,
             metric: Metric) -> tuple[State, torch.Tensor]:
    """One leapfrog step of signed size ``step`` (C,) for every chain."""
    half = step[:, None] * 0.5
    p = p - half * s.grad
    z = s.z + step[:, None] * metric.velocity(p)
    u, grad = pot(z)
    return State(z, u, grad), p - half * grad


def _uniform(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=DTYPE)


def _turning(v_left: torch.Tensor, v_right: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Generalised no-U-turn criterion (Betancourt 2017) for each chain."""
    return ((v_left * rho).sum(-1) <= 0) | ((v_right * rho).sum(-1) <= 0)


@dataclass
class Transition:
    """What one iteration of the sampler did, per chain."""

    state: State
    accept_stat: torch.Tensor
    diverging: torch.Tensor
    num_steps: torch.Tensor
    tree_depth: torch.Tensor


def nuts_transition(pot: BatchedPotential, s: State, step_size: torch.Tensor, metric: Metric,
                    gen: torch.Generator, max_tree_depth: int) -> Transition:
    """One NUTS iteration for every chain (iterative tree building, see the module docstring)."""
    c = s.z.shape[0]
    p0 = metric.momentum(gen, s.z.shape)
    h0 = s.u + metric.kinetic(p0)
    left, right, p_left, p_right = s, s, p0, p0
    proposal, log_w, rho = s, -h0, p0.clone()
    done = torch.zeros(c, dtype=torch.bool)
    diverging = torch.zeros(c, dtype=torch.bool)
    depth = torch.zeros(c, dtype=torch.long)
    sum_accept = torch.zeros(c, dtype=DTYPE)
    steps = torch.zeros(c, dtype=DTYPE)
    for j in range(max_tree_depth):
        active = ~done
        if not bool(active.any()):
            break
        forward = _uniform(gen, c) < 0.5
        edge = right.where(forward, left)
        p = torch.where(forward[:, None], p_right, p_left)
        step = torch.where(forward, step_size, -step_size)
        sub_log_w = torch.full((c,), -math.inf, dtype=DTYPE)
        sub_proposal, sub_rho = edge, torch.zeros_like(p0)
        stopped = torch.zeros(c, dtype=torch.bool)
        checkpoints: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for n in range(2 ** j):
            live = active & ~stopped
            new, p_new = leapfrog(pot, edge, p, step, metric)
            edge, p = new.where(live, edge), torch.where(live[:, None], p_new, p)
            energy = new.u + metric.kinetic(p_new)
            error = energy - h0
            bad = ~torch.isfinite(error) | (error > MAX_ENERGY_ERROR)
            leaf_log_w = torch.where(torch.isfinite(energy), -energy, -math.inf)
            sum_accept += torch.where(live & torch.isfinite(error), torch.exp(torch.clamp(-error, max=0.0)), 0.0)
            steps += live.to(DTYPE)
            total = torch.logaddexp(sub_log_w, leaf_log_w)
            take = live & (_uniform(gen, c) < torch.exp(leaf_log_w - total))
            sub_proposal = new.where(take, sub_proposal)
            sub_log_w = torch.where(live, total, sub_log_w)
            sub_rho = torch.where(live[:, None], sub_rho + p_new, sub_rho)
            v_new = metric.velocity(p_new)
            turned = torch.zeros(c, dtype=torch.bool)
            for k in range(1, j + 1):
                if n % 2 ** k == 0:  # this leaf opens a sub-tree of 2^k leaves
                    checkpoints[k] = (v_new, sub_rho - p_new)
                if (n + 1) % 2 ** k == 0:  # this leaf closes it
                    v_first, rho_before = checkpoints[k]
                    turned |= _turning(v_first, v_new, sub_rho - rho_before)
            diverging |= live & bad
            stopped |= live & (bad | turned)
        joins = active & ~stopped
        take = joins & (_uniform(gen, c) < torch.exp(sub_log_w - log_w))
        proposal = sub_proposal.where(take, proposal)
        log_w = torch.where(joins, torch.logaddexp(log_w, sub_log_w), log_w)
        right = edge.where(joins & forward, right)
        p_right = torch.where((joins & forward)[:, None], p, p_right)
        left = edge.where(joins & ~forward, left)
        p_left = torch.where((joins & ~forward)[:, None], p, p_left)
        rho = torch.where(joins[:, None], rho + sub_rho, rho)
        depth = torch.where(active, j + 1, depth)
        turned = _turning(metric.velocity(p_left), metric.velocity(p_right), rho)
        done |= stopped | (active & turned)
    return Transition(proposal, sum_accept / steps.clamp(min=1), diverging, steps, depth)


def hmc_transition(pot: BatchedPotential, s: State, step_size: torch.Tensor, metric: Metric,
                   gen: torch.Generator, num_leapfrog: int) -> Transition:
    """One HMC iteration: ``num_leapfrog`` steps and a Metropolis correction, every chain.

    The step size is jittered by up to 20% either way at each iteration (Neal 2011, 5.4.2.2):
    with a fixed trajectory length a near-Gaussian posterior can make the trajectory close to
    a whole period, and the chain barely moves (measured: bulk ESS 6 of 800 draws on
    normal_gamma without jitter, with Pyro's HMC as well).
    """
    c = s.z.shape[0]
    p = metric.momentum(gen, s.z.shape)
    h0 = s.u + metric.kinetic(p)
    new = s
    step = step_size * (0.8 + 0.4 * _uniform(gen, c))
    for _ in range(num_leapfrog):
        new, p = leapfrog(pot, new, p, step, metric)
    error = new.u + metric.kinetic(p) - h0
    error = torch.where(torch.isnan(error), math.inf, error)
    accept_prob = torch.exp(torch.clamp(-error, max=0.0))
    accept = _uniform(gen, c) < accept_prob
    return Transition(new.where(accept, s), accept_prob, error > MAX_ENERGY_ERROR,
                      torch.full((c,), float(num_leapfrog), dtype=DTYPE), torch.zeros(c, dtype=torch.long))


# ----------------------------------------------------------------------------- adaptation


def initial_step_size(pot: BatchedPotential, s: State, metric: Metric, gen: torch.Generator,
                      step: torch.Tensor) -> torch.Tensor:
    """Stan's heuristic: double or halve each chain's step until one leapfrog step's
    acceptance probability crosses 1/2."""
    p = metric.momentum(gen, s.z.shape)
    h0 = s.u + metric.kinetic(p)

    def log_accept(eps: torch.Tensor) -> torch.Tensor:
        new, p_new = leapfrog(pot, s, p, eps, metric)
        err = h0 - (new.u + metric.kinetic(p_new))
        return torch.where(torch.isnan(err), -math.inf, err)

    up = log_accept(step) > math.log(0.5)
    going = torch.ones_like(up)
    for _ in range(60):
        trial = torch.where(up, step * 2, step / 2)
        still = (log_accept(trial) > math.log(0.5)) == up
        step = torch.where(going, trial, step)
        going &= still
        if not bool(going.any()):
            break
    return step


@dataclass
class DualAveraging:
    """Nesterov dual averaging of log step size per chain (Hoffman and Gelman 2014, sec. 3.2)."""

    mu: torch.Tensor
    target: float
    t: int = 0
    h_bar: torch.Tensor | None = None
    log_step_bar: torch.Tensor | None = None
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    @classmethod
    def start(cls, step: torch.Tensor, target: float) -> DualAveraging:
        return cls(torch.log(10 * step), target, 0, torch.zeros_like(step), torch.zeros_like(step))

    def update(self, accept_stat: torch.Tensor) -> torch.Tensor:
        """New step size after an iteration with the given acceptance statistics."""
        self.t += 1
        eta = 1.0 / (self.t + self.t0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target - accept_stat)
        log_step = self.mu - math.sqrt(self.t) / self.gamma * self.h_bar
        weight = self.t ** -self.kappa
        self.log_step_bar = weight * log_step + (1 - weight) * self.log_step_bar
        return torch.exp(log_step)

    def final(self) -> torch.Tensor:
        return torch.exp(self.log_step_bar)


def windows(num_warmup: int) -> list[tuple[int, int]]:
    """Warm-up iterations [start, end) whose draws re-estimate the metric: Stan's doubling
    windows (25, 50, 100, ...; the last one stretched to the end) between a 75-iteration
    start buffer and a 50-iteration end buffer (15% / 75% / 10% of a warm-up shorter than
    150 iterations; no metric adaptation below 20)."""
    if num_warmup < 20:
        return []
    start, end_buffer, size = 75, 50, 25
    if start + end_buffer + size > num_warmup:
        start, end_buffer = int(0.15 * num_warmup), int(0.1 * num_warmup)
        size = num_warmup - start - end_buffer
    out, last = [], num_warmup - end_buffer
    while start < last:
        end = start + size if start + 3 * size <= last else last
        out.append((start, end))
        start, size = end, 2 * size
    return out


def estimate_metric(draws: torch.Tensor, dense: bool) -> Metric:
    """Regularised (co)variance of window draws (n, C, D), as Stan does."""
    n = draws.shape[0]
    centred = draws - draws.mean(0)
    shrink, eye = n / (n + 5.0), 1e-3 * 5.0 / (n + 5.0)
    if dense:
        cov = torch.einsum("ncd,nce->cde", centred, centred) / max(n - 1, 1)
        return Metric(shrink * cov + eye * torch.eye(draws.shape[2], dtype=DTYPE))
    return Metric(shrink * (centred ** 2).sum(0) / max(n - 1, 1) + eye)


# ----------------------------------------------------------------------------- driver


@dataclass
class Run:
    """Draws and sampler statistics of a batched run."""

    draws: dict[str, np.ndarray]          # site -> (C, S, *shape)
    stats: dict[str, np.ndarray]          # diverging, acceptance_rate, step_size, n_steps, tree_depth: (C, S)
    step_size: np.ndarray                 # (C,) after warm-up
    gradient_evaluations: int             # batched evaluations of the potential (each serves every chain)
    interrupted: bool


def sample(pot: BatchedPotential, init: torch.Tensor, transition: Callable[..., Transition], *, seed: int,
           num_warmup: int, num_samples: int, target_accept: float, dense_mass: bool,
           progress: bool = False) -> Run:
    """Warm up and sample every chain from the positions ``init`` (C, D).

    Ctrl-C during the sampling phase stops early and returns the draws made so far (every
    chain has the same number); during warm-up it propagates.
    """
    gen = torch.Generator().manual_seed(int(seed) % (2 ** 63))
    c, d = init.shape
    u, grad = pot(init)
    s = State(init, u, grad)
    metric = Metric(torch.ones(c, d, d, dtype=DTYPE) * torch.eye(d, dtype=DTYPE) if dense_mass
                    else torch.ones(c, d, dtype=DTYPE))
    step = initial_step_size(pot, s, metric, gen, torch.ones(c, dtype=DTYPE))
    adapt = DualAveraging.start(step, target_accept)
    todo, window = windows(num_warmup), []
    kept: list[Transition] = []
    interrupted = False
    iterations = range(num_warmup + num_samples)
    if progress:
        from tqdm.auto import tqdm
        iterations = tqdm(iterations, desc="batched sampler", leave=False)
    try:
        for i in iterations:
            t = transition(pot, s, step, metric, gen)
            s = t.state
            if i < num_warmup:
                step = adapt.update(t.accept_stat)
                if todo and todo[0][0] <= i < todo[0][1]:
                    window.append(s.z)
                if todo and i + 1 == todo[0][1]:
                    metric = estimate_metric(torch.stack(window), dense_mass)
                    todo, window = todo[1:], []
                    step = initial_step_size(pot, s, metric, gen, step)
                    adapt = DualAveraging.start(step, target_accept)
                if i + 1 == num_warmup:
                    step = adapt.final()
            else:
                kept.append(t)
    except KeyboardInterrupt:
        if not kept:
            raise
        interrupted = True
    z = torch.stack([t.state.z for t in kept], 1)  # (C, S, D)
    values = pot.constrain(z.reshape(-1, d))
    draws = {k: v.detach().reshape((c, len(kept)) + v.shape[1:]).numpy() for k, v in values.items()}
    stats = {"diverging": torch.stack([t.diverging for t in kept], 1).numpy(),
             "acceptance_rate": torch.stack([t.accept_stat for t in kept], 1).numpy(),
             "n_steps": torch.stack([t.num_steps for t in kept], 1).numpy(),
             "tree_depth": torch.stack([t.tree_depth for t in kept], 1).numpy(),
             "step_size": np.repeat(step.numpy()[:, None], len(kept), 1)}
    return Run(draws, stats, step.numpy(), pot.evaluations, interrupted)

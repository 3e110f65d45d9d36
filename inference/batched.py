"""Multi-chain NUTS and HMC in plain torch: every chain advances in one batched computation.

Why: Pyro's NUTS spends its time in Python, not arithmetic (about 5 ms per gradient on a
two-parameter model). Here the potential of all chains is one compiled graph
(`inference.potential`), and one compiled *step* (`inference.compiled`) moves every chain by
one leapfrog step of its own trajectory, so C chains cost about what one chain costs.

The samplers are the ones Stan and NumPyro run:

- NUTS: multinomial sampling of the trajectory (uniform progressive sampling inside a new
  subtree, biased progressive sampling when it joins the tree), the generalised no-U-turn
  criterion on every sub-tree (checked with checkpoints of the momentum sums, as NumPyro's
  iterative NUTS), a subtree with a U-turn or a divergence (energy error > 1000) is rejected
  and ends the trajectory; maximum tree depth ``max_tree_depth``. The chains are not kept in
  step: each leaf step moves every chain one leapfrog step along its own tree, and a chain
  whose trajectory has ended starts its next one at the next step, so no chain waits for the
  deepest tree of the batch.
- HMC: ``num_leapfrog`` steps with the step size jittered by up to 20% and a Metropolis
  correction.

Warm-up: Pyro's `pyro.infer.mcmc.adaptation.WarmupAdapter`, one per chain (Stan's windows,
`pyro.ops.dual_averaging.DualAveraging` of the step size towards ``target_accept`` and
`pyro.ops.welford.WelfordCovariance` for a diagonal or dense inverse mass matrix, whose square
root for the momentum is the adapter's `BlockMassMatrix`'s); after each metric window the step
size is re-initialised by Stan's heuristic.

Ours because Pyro's take one chain (one draw's sites, a scalar potential differentiated by
autograd): leapfrog (`pyro.ops.integrator.velocity_verlet`), velocity (`BlockMassMatrix.kinetic_grad`),
tree building (`pyro.infer.mcmc.NUTS`), Stan's initial step size (a private method of its kernel).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from pyro.infer.mcmc.adaptation import WarmupAdapter
from tqdm.auto import tqdm

from zoo.core.problem import DTYPE
from zoo.inference import compiled
from zoo.inference.potential import Potential

MAX_ENERGY_ERROR = 1000.0
RNG_BLOCK = 64  # leaf steps whose random numbers are drawn at once

# ----------------------------------------------------------------------------- dynamics
#
# Every chain's state is a dict of tensors with the chains first. A step takes the state, the
# tuning (step_size (C,), inv_mass, sqrt_mass) and its random numbers (noise (C, D), uniform
# (C, 3)) and returns the next state; ``done`` marks the chains whose iteration ended at this
# step. A draw is packed in one row [z (D) | grad (D) | u | lp | energy] (`pack`), so that
# choosing between draws is one operation: the compiled step is a few hundred small tensor
# operations, whose count, not their arithmetic, sets its time on small models.


def velocity(p: torch.Tensor, inv_mass: torch.Tensor) -> torch.Tensor:
    """M^-1 p (C, D) for a diagonal (C, D) or dense (C, D, D) inverse mass matrix."""
    return (p[:, None] @ inv_mass.mT)[:, 0] if inv_mass.dim() == 3 else inv_mass * p


def _momentum(noise: torch.Tensor, sqrt_mass: torch.Tensor) -> torch.Tensor:
    """S noise (C, D): momentum ~ N(0, M) where S S^T = M."""
    return (sqrt_mass @ noise[..., None])[..., 0] if sqrt_mass.dim() == 3 else sqrt_mass * noise


def _kinetic(p: torch.Tensor, inv_mass: torch.Tensor) -> torch.Tensor:
    return 0.5 * (p * velocity(p, inv_mass)).sum(-1)


def pack(z: torch.Tensor, grad: torch.Tensor, u: torch.Tensor, lp: torch.Tensor,
         energy: torch.Tensor) -> torch.Tensor:
    """Draws as rows [z | grad | u | lp | energy] (C, 2D + 3)."""
    return torch.cat([z, grad, torch.stack([u, lp, energy], 1)], 1)


def unpack(draw: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """z, grad, u, lp, energy of packed draws."""
    d = (draw.shape[1] - 3) // 2
    return draw[:, :d], draw[:, d:2 * d], draw[:, 2 * d], draw[:, 2 * d + 1], draw[:, 2 * d + 2]


def _leapfrog(potential: Callable[..., Any], z: torch.Tensor, p: torch.Tensor, grad: torch.Tensor,
              eps: torch.Tensor, inv_mass: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One leapfrog step of signed size eps (C, 1): z, p, grad, u, lp at the new point (a
    point where the potential is not finite gives a non-finite energy: a divergence)."""
    half = 0.5 * eps
    p = p - half * grad
    z = z + eps * velocity(p, inv_mass)
    u, grad, lp = potential(z)
    return z, p - half * grad, grad, u, lp


def _starting(s: dict[str, torch.Tensor], noise: torch.Tensor, sqrt_mass: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the last trajectory is done a new one starts from the draw in hand: the mask,
    its momentum S noise, its Hamiltonian (the kinetic energy of S noise is |noise|^2 / 2
    for any metric, as S^T M^-1 S = I) and the draws with that Hamiltonian as their energy."""
    new, draw = s["done"], s["draw"]
    c, w = draw.shape
    h0 = torch.where(new, draw[:, w - 3] + 0.5 * (noise * noise).sum(1), s["h0"])
    last = torch.arange(w) == w - 1  # the energy column
    return new, _momentum(noise, sqrt_mass), h0, torch.where(new.view(c, 1) & last, h0.view(c, 1), draw)


def nuts_step(potential: Callable[..., Any], s: dict[str, torch.Tensor], step_size: torch.Tensor,
              inv_mass: torch.Tensor, sqrt_mass: torch.Tensor, noise: torch.Tensor, log_uniform: torch.Tensor,
              *, max_tree_depth: int) -> dict[str, torch.Tensor]:
    """One leapfrog step of every chain's NUTS trajectory, and its bookkeeping (module
    docstring); ``log_uniform`` holds logs of uniform draws."""
    c, d = s["rho"].shape
    new, p0, h0, draw = _starting(s, noise, sqrt_mass)
    start = torch.cat([draw[:, :d], p0, draw[:, d:2 * d]], 1).view(c, 1, 3, d)  # z, p, grad of both edges
    edges = torch.where(new.view(c, 1, 1, 1), start, s["edges"])
    log_w = torch.where(new, -h0, s["log_w"])
    rho = torch.where(new.view(c, 1), p0, s["rho"])
    depth = torch.where(new, 0, s["depth"])
    # a new subtree (of 2^depth leaves) where a trajectory starts or the last subtree joined
    fresh = new | s["fresh"]
    forward = torch.where(fresh, log_uniform[:, 0] < math.log(0.5), s["forward"])
    leaf = torch.where(fresh, 0, s["leaf"])
    sub_log_w = torch.where(fresh, -math.inf, s["sub_log_w"])
    sub_rho = torch.where(fresh.view(c, 1), 0.0, s["sub_rho"])
    # leapfrog from the edge in this subtree's direction; that edge moves
    side = forward.long()
    z0, p, g0 = edges[torch.arange(c), side].unbind(1)
    eps = torch.where(forward, step_size, -step_size).view(c, 1)
    z, p, grad, u, lp = _leapfrog(potential, z0, p, g0, eps, inv_mass)
    moved = torch.stack([~forward, forward], 1).view(c, 2, 1, 1)
    edges = torch.where(moved, torch.cat([z, p, grad], 1).view(c, 1, 3, d), edges)
    # the leaf: its weight, acceptance statistic, divergence, and progressive sampling
    v = velocity(p, inv_mass)
    energy = u + 0.5 * (p * v).sum(1)
    error = energy - h0
    bad = ~(error <= MAX_ENERGY_ERROR)  # NaN too
    accept_sum = torch.where(new, 0.0, s["accept_sum"]) + torch.exp(torch.clamp(-error, max=0.0)).nan_to_num(0.0)
    total = torch.logaddexp(sub_log_w, -energy)
    take = (log_uniform[:, 1] < -energy - total) | fresh
    sub = torch.where(take.view(c, 1), pack(z, grad, u, lp, energy), s["sub"])
    sub_rho = sub_rho + p
    # U-turns inside the subtree: leaf n opens the sub-trees of 2^k leaves it starts and
    # closes those it ends (k = 1 .. depth), each checked from its first leaf's checkpoint
    levels = torch.arange(1, s["ck"].shape[1] + 1)
    width = 2 ** levels
    inside = levels <= depth.view(c, 1)
    position = leaf.view(c, 1)
    opens = inside & (position % width == 0)
    ck = torch.where(opens.view(c, -1, 1, 1), torch.cat([v, sub_rho - p], 1).view(c, 1, 2, d), s["ck"])
    closes = inside & ((position + 1) % width == 0)
    span = sub_rho.view(c, 1, d) - ck[:, :, 1]
    turning = torch.minimum((ck[:, :, 0] * span).sum(-1), (v.view(c, 1, d) * span).sum(-1)) <= 0
    leaf = leaf + 1
    stopped = bad | (closes & turning).any(1)
    joins = ~stopped & (leaf == 2 ** depth)
    # a complete subtree joins the trajectory (biased progressive sampling)
    take = joins & (log_uniform[:, 2] < total - log_w)
    draw = torch.where(take.view(c, 1), sub, draw)
    log_w = torch.where(joins, torch.logaddexp(log_w, total), log_w)
    rho = torch.where(joins.view(c, 1), rho + sub_rho, rho)
    deeper = depth + 1
    tree_depth = torch.where(stopped | joins, deeper, s["tree_depth"])
    depth = torch.where(joins, deeper, depth)
    u_turn = ((edges[:, :, 1] * velocity(rho, inv_mass).view(c, 1, d)).sum(-1) <= 0).any(1)
    done = stopped | (joins & (u_turn | (depth >= max_tree_depth)))
    return dict(s, draw=draw, sub=sub, edges=edges, ck=ck, rho=rho, sub_rho=sub_rho, log_w=log_w, h0=h0,
                sub_log_w=total, depth=depth, leaf=leaf, forward=forward, fresh=joins & ~done, done=done,
                accept_sum=accept_sum, n_steps=torch.where(new, 0.0, s["n_steps"]) + 1,
                diverging=(s["diverging"] & ~new) | bad, tree_depth=tree_depth)


def hmc_step(potential: Callable[..., Any], s: dict[str, torch.Tensor], step_size: torch.Tensor,
             inv_mass: torch.Tensor, sqrt_mass: torch.Tensor, noise: torch.Tensor, log_uniform: torch.Tensor,
             *, num_leapfrog: int) -> dict[str, torch.Tensor]:
    """One leapfrog step of every chain's HMC trajectory; after ``num_leapfrog`` of them, the
    Metropolis correction (``log_uniform``: logs of uniform draws).

    The step size is jittered by up to 20% either way at each iteration (Neal 2011, 5.4.2.2):
    with a fixed trajectory length a near-Gaussian posterior can make the trajectory close to
    a whole period, and the chain barely moves (measured: bulk ESS 6 of 800 draws on
    normal_gamma without jitter, with Pyro's HMC as well).
    """
    c, d = noise.shape
    new, p0, h0, draw = _starting(s, noise, sqrt_mass)
    start = torch.cat([draw[:, :d], p0, draw[:, d:2 * d]], 1).view(c, 3, d)
    z0, p, g0 = torch.where(new.view(c, 1, 1), start, s["edge"]).unbind(1)
    eps = torch.where(new, step_size * (0.8 + 0.4 * log_uniform[:, 0].exp()), s["eps"])
    z, p, grad, u, lp = _leapfrog(potential, z0, p, g0, eps.view(c, 1), inv_mass)
    n_steps = torch.where(new, 0.0, s["n_steps"]) + 1
    done = n_steps >= num_leapfrog
    energy = u + _kinetic(p, inv_mass)
    error = (energy - h0).nan_to_num(math.inf)
    accept = done & (log_uniform[:, 1] < -error)
    draw = torch.where(accept.view(c, 1), pack(z, grad, u, lp, energy), draw)
    return dict(s, draw=draw, edge=torch.stack([z, p, grad], 1), eps=eps, h0=h0, n_steps=n_steps, done=done,
                accept_sum=torch.exp(torch.clamp(-error, max=0.0)) * n_steps, diverging=error > MAX_ENERGY_ERROR)


def initial_state(z: torch.Tensor, u: torch.Tensor, grad: torch.Tensor, lp: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fields every algorithm's state has, at the draws (z, u, grad, lp) (C, ...)."""
    c = z.shape[0]
    return {"draw": pack(z, grad, u, lp, torch.zeros_like(u)), "h0": torch.zeros_like(u),
            "accept_sum": torch.zeros_like(u), "n_steps": torch.zeros_like(u),
            "diverging": torch.zeros(c, dtype=torch.bool), "tree_depth": torch.zeros(c, dtype=torch.long),
            "done": torch.ones(c, dtype=torch.bool)}


def nuts_state(c: int, d: int, max_tree_depth: int) -> dict[str, torch.Tensor]:
    """The fields of `nuts_step`'s state besides `initial_state`'s."""
    zeros, vec = torch.zeros(c, dtype=DTYPE), torch.zeros(c, d, dtype=DTYPE)
    return {"sub": torch.zeros(c, 2 * d + 3, dtype=DTYPE), "edges": torch.zeros(c, 2, 3, d, dtype=DTYPE),
            "ck": torch.zeros(c, max(max_tree_depth - 1, 1), 2, d, dtype=DTYPE), "rho": vec, "sub_rho": vec,
            "log_w": zeros, "sub_log_w": zeros, "depth": torch.zeros(c, dtype=torch.long),
            "leaf": torch.zeros(c, dtype=torch.long), "forward": torch.zeros(c, dtype=torch.bool),
            "fresh": torch.zeros(c, dtype=torch.bool)}


def hmc_state(c: int, d: int) -> dict[str, torch.Tensor]:
    """The fields of `hmc_step`'s state besides `initial_state`'s."""
    return {"edge": torch.zeros(c, 3, d, dtype=DTYPE), "eps": torch.zeros(c, dtype=DTYPE)}


@dataclass(frozen=True)
class Algorithm:
    """A sampler as the driver sees it: its leaf step and the extra fields of its state."""

    name: str
    step: Callable[..., dict[str, torch.Tensor]]
    fields: Callable[[int, int], dict[str, torch.Tensor]]


def nuts(max_tree_depth: int) -> Algorithm:
    """NUTS with trees of at most 2^max_tree_depth - 1 leapfrog steps."""
    return Algorithm("nuts", partial(nuts_step, max_tree_depth=max_tree_depth),
                     lambda c, d: nuts_state(c, d, max_tree_depth))


def hmc(num_leapfrog: int) -> Algorithm:
    """HMC with ``num_leapfrog`` jittered leapfrog steps per iteration."""
    return Algorithm("hmc", partial(hmc_step, num_leapfrog=num_leapfrog), hmc_state)


SAMPLERS: dict[str, Callable[..., Algorithm]] = {"nuts": nuts, "hmc": hmc}


# ----------------------------------------------------------------------------- adaptation


def reasonable_step_size(pot: Potential, z: torch.Tensor, inv_mass: torch.Tensor, sqrt_mass: torch.Tensor,
                         gen: torch.Generator, step: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Stan's heuristic for the chains in ``rows`` (a mask) at positions z (C, D): double or
    halve each step size until one leapfrog step's acceptance probability crosses 1/2."""
    u, grad, _ = pot(z)
    p = _momentum(torch.randn(z.shape, generator=gen, dtype=DTYPE), sqrt_mass)
    h0 = u + _kinetic(p, inv_mass)

    def accepts(eps: torch.Tensor) -> torch.Tensor:
        _, p1, _, u1, _ = _leapfrog(pot, z, p, grad, eps[:, None], inv_mass)
        return h0 - (u1 + _kinetic(p1, inv_mass)) > math.log(0.5)  # NaN: False

    up = accepts(step)
    going = rows.clone()
    for _ in range(60):
        trial = torch.where(up, step * 2, step / 2)
        still = accepts(trial) == up
        step = torch.where(going, trial, step)
        going &= still
        if not bool(going.any()):
            break
    return step


class Tuning:
    """Each chain's step size, inverse mass matrix M^-1 and S (S S^T = M), adapted by its own
    Pyro `WarmupAdapter` (whose step size heuristic is `reasonable_step_size`)."""

    def __init__(self, pot: Potential, z: torch.Tensor, gen: torch.Generator, *, num_warmup: int,
                 target_accept: float, dense_mass: bool) -> None:
        c, d = z.shape
        self.pot, self.gen, self.z = pot, gen, z
        self.identity = torch.eye(d, dtype=DTYPE) if dense_mass else torch.ones(d, dtype=DTYPE)
        self.adapters = [WarmupAdapter(step_size=1.0, adapt_step_size=True, target_accept_prob=target_accept,
                                       adapt_mass_matrix=True, dense_mass=dense_mass) for _ in range(c)]
        for i, adapter in enumerate(self.adapters):
            adapter.configure(num_warmup, initial_step_size=1.0, mass_matrix_shape={("z",): self.identity.shape},
                              find_reasonable_step_size_fn=partial(self._reasonable, i), options={"dtype": DTYPE})
        self.inv_mass, self.sqrt_mass = (torch.stack(m) for m in zip(*map(self._metric, range(c))))
        self.step_size = torch.ones(c, dtype=DTYPE)
        for i, adapter in enumerate(self.adapters):
            adapter.reset_step_size_adaptation({"z": z[i]})
            self.step_size[i] = adapter.step_size

    def _metric(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """M^-1 and S of chain ``i``'s adapter (S: its `BlockMassMatrix.scale` of the identity)."""
        block = self.adapters[i].mass_matrix_adapter
        return block.inverse_mass_matrix[("z",)], block.scale({("z",): self.identity}, {"z": self.identity})["z"]

    def _reasonable(self, i: int, z: dict[str, torch.Tensor]) -> float:
        """Stan's initial step size for chain ``i`` at ``z["z"]`` under its adapter's metric
        (the other rows of the batch are filler)."""
        rows = torch.arange(len(self.step_size)) == i
        inv, sqrt = self.inv_mass.clone(), self.sqrt_mass.clone()
        inv[i], sqrt[i] = self._metric(i)
        zs = torch.where(rows[:, None], z["z"], self.z)
        return float(reasonable_step_size(self.pot, zs, inv, sqrt, self.gen, self.step_size.clone(), rows)[i])

    def update(self, i: int, t: int, z: torch.Tensor, accept: torch.Tensor) -> None:
        """Chain ``i`` finished warm-up iteration ``t`` (0-based) at positions z (C, D)."""
        self.z = z
        self.adapters[i].step(t, {"z": z[i]}, accept)
        self.inv_mass[i], self.sqrt_mass[i] = self._metric(i)
        self.step_size[i] = self.adapters[i].step_size


# ----------------------------------------------------------------------------- driver


@dataclass
class Run:
    """Draws and sampler statistics of a batched run."""

    draws: dict[str, np.ndarray]          # site -> (C, S, *shape)
    stats: dict[str, np.ndarray]          # lp, energy, diverging, tree_depth, step_size, n_steps, acceptance_rate: (C, S)
    gradient_evaluations: int             # leapfrog steps of every chain, warm-up included
    interrupted: bool
    notes: dict[str, Any]


def compile_step(algorithm: Algorithm, pot: Potential, s: dict[str, torch.Tensor],
                 tune: tuple[torch.Tensor, ...]) -> Callable[..., tuple[torch.Tensor, ...]] | None:
    """The algorithm's step with the potential in it as one compiled graph over the state's
    values and the tuning; None where the potential runs uncompiled (a Python branch on a
    value), or where the graph differs from the step at ``s``."""
    if pot.fx is None:
        return None
    keys = list(s)

    def flat(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = algorithm.step(pot.fx, dict(zip(keys, args)), *args[len(keys):])
        return tuple(out[k] for k in keys)

    example = tuple(v.clone() for v in tuple(s.values()) + tune)  # distinct objects: a tracer merges aliases
    graphs = compiled.checked(flat, [example], tol=1e-12)
    return None if graphs is None else graphs[0]


def sample(pot: Potential, init: torch.Tensor, algorithm: Algorithm, *, seed: int, num_warmup: int,
           num_samples: int, target_accept: float, dense_mass: bool, progress: bool = False) -> Run:
    """Warm up and sample every chain from the positions ``init`` (C, D).

    Ctrl-C during the sampling phase stops early and returns the draws made so far (every
    chain keeps the same number); during warm-up it propagates.
    """
    gen = torch.Generator().manual_seed(int(seed) % (2 ** 63))
    c, d = init.shape
    s = {**initial_state(init, *pot(init)), **algorithm.fields(c, d)}
    tuning = Tuning(pot, init, gen, num_warmup=num_warmup, target_accept=target_accept, dense_mass=dense_mass)

    def random_block() -> tuple[torch.Tensor, torch.Tensor]:  # noise, log-uniforms: (RNG_BLOCK, C, D | 3)
        return (torch.randn(RNG_BLOCK, c, d, generator=gen, dtype=DTYPE),
                torch.rand(RNG_BLOCK, c, 3, generator=gen, dtype=DTYPE).log())

    noise, uniform = random_block()
    start = time.perf_counter()
    graph = compile_step(algorithm, pot, s, (tuning.step_size, tuning.inv_mass, tuning.sqrt_mass, noise[0],
                                             uniform[0]))
    notes = {**pot.notes, "step_compile_seconds": time.perf_counter() - start, "step_compiled": graph is not None}
    keys, total, iteration = list(s), num_warmup + num_samples, [0] * c
    kept: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in range(c)]
    evaluations, block, interrupted = 0, 0, False
    bar = tqdm(total=c * total, desc=f"batched {algorithm.name}", leave=False, disable=not progress)
    try:
        while min(iteration) < total:
            if block == RNG_BLOCK:
                (noise, uniform), block = random_block(), 0
            tune = (tuning.step_size, tuning.inv_mass, tuning.sqrt_mass, noise[block], uniform[block])
            block += 1
            out = None
            if graph is not None:
                try:
                    out = dict(zip(keys, graph(*s.values(), *tune)))
                except RuntimeError:  # TorchScript turns every error into a RuntimeError: replay eagerly
                    pass
            s = out if out is not None else algorithm.step(pot.robust, s, *tune)
            evaluations += sum(t < total for t in iteration)
            done = s["done"]
            if not bool(done.any()):
                continue
            accept = s["accept_sum"] / s["n_steps"]
            z = s["draw"][:, :d]
            for i in torch.nonzero(done).flatten().tolist():
                t = iteration[i]
                if t < num_warmup:
                    tuning.update(i, t, z, accept[i])
                elif t < total:
                    kept[i].append((s["draw"][i], s["diverging"][i], s["tree_depth"][i], s["n_steps"][i],
                                    accept[i], tuning.step_size[i].clone()))
                iteration[i] = t + 1
                bar.update(int(t < total))
    except KeyboardInterrupt:
        if min(len(k) for k in kept) == 0:
            raise
        interrupted = True
    finally:
        bar.close()
    drawn = min(len(k) for k in kept)
    rows = [torch.stack(column) for column in zip(*(r for k in kept for r in k[:drawn]))]
    draw, diverging, tree_depth, n_steps, accept, step = (x.reshape((c, drawn) + x.shape[1:]) for x in rows)
    z, _, _, lp, energy = unpack(draw.reshape(c * drawn, -1))
    stats = {"lp": lp, "energy": energy, "diverging": diverging, "tree_depth": tree_depth,
             "n_steps": n_steps.long(), "acceptance_rate": accept, "step_size": step}
    stats = {k: v.reshape(c, drawn).numpy() for k, v in stats.items()}
    draws = {k: v.detach().reshape((c, drawn) + v.shape[1:]).numpy() for k, v in pot.constrain(z).items()}
    return Run(draws, stats, evaluations, interrupted, notes)

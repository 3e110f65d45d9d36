"""Multi-chain NUTS and HMC in plain torch: every chain advances in one batched computation.

Why: Pyro's NUTS spends its time in Python, not arithmetic (about 5 ms per gradient on a
two-parameter model). Here the potential of all chains is one compiled graph, and one
compiled *step* moves every chain by one leapfrog step of its own trajectory, so C chains
cost about what one chain costs.

The potential (`build`): U(z) = -log p(data, x(z)) - log|dx/dz| on the unconstrained space
(`torch.distributions.biject_to` of each site's support; coordinates a transform ignores, such
as the upper triangle of a lower-Cholesky parametrisation, are dropped). Two ways to evaluate
it for C chains at once, each traced to one graph of aten operations (``make_fx``) and replayed
by TorchScript:

- ``vmap``: `torch.func.vmap` of the one-draw log density and its gradient; any model written
  for one draw (``X @ w``, Python loops, ``torch.stack``) runs, provided it does not branch on
  a value (``if x > 0``, ``.item()``);
- ``plate``: the draws as an outer plate left of the model's own (`inference.common.padded`);
  only models that broadcast run.

A path is used only if, at every chain's initial point, its potential and gradient equal
Pyro's (`pyro.infer.mcmc.util.initialize_model`) and are finite, and its compiled graph equals
the model at a second point (a trace bakes in Python branches). Where both paths pass, the
faster one is kept; where none does, `build` returns the reason and the back-end runs Pyro's
own kernel. At run time only a numerical failure at a point (`torch.linalg.LinAlgError`: the
Cholesky factor of an overflowing matrix) becomes an infinite potential, for that chain alone;
any other error propagates.

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
`pyro.ops.welford.WelfordCovariance` for a diagonal or dense inverse mass matrix); after each
metric window the step size is re-initialised by Stan's heuristic.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.adaptation import WarmupAdapter
from pyro.infer.mcmc.util import initialize_model
from torch.distributions import biject_to
from torch.distributions.transforms import IndependentTransform, identity_transform
from torch.fx.experimental import const_fold
from torch.fx.experimental.proxy_tensor import make_fx
from tqdm.auto import tqdm

from zoo.core.problem import DTYPE, Problem
from zoo.inference.common import padded, vectorised_over

MAX_ENERGY_ERROR = 1000.0
PATHS = ("vmap", "plate")
STATIC_RUNTIME = True  # run compiled graphs by TorchScript's static runtime (False: by TorchScript itself)
RNG_BLOCK = 64  # leaf steps whose random numbers are drawn at once


@dataclass
class Block:
    """One latent site's slice of the flat unconstrained vector."""

    name: str
    transform: torch.distributions.Transform
    ushape: tuple[int, ...]          # unconstrained shape
    select: torch.Tensor | None      # (size, numel): kept coordinates -> full vector (None: all kept)
    size: int                        # number of coordinates kept


def blocks_of(problem: Problem, values: dict[str, torch.Tensor]) -> list[Block]:
    """The unconstrained blocks of ``problem``'s latent sites, read from a trace at ``values``."""
    with torch.no_grad(), pyro.validation_enabled(False):
        tr = poutine.trace(poutine.condition(problem.model, values)).get_trace()
    blocks = []
    for name in problem.sites:
        transform = biject_to(tr.nodes[name]["fn"].support)
        u = transform.inv(values[name].to(DTYPE))
        m = u.numel()
        probe = u.reshape(1, m) + torch.eye(m, dtype=DTYPE)  # move one coordinate at a time
        moved = transform(probe.reshape((m,) + u.shape)).reshape(m, -1)
        used = (moved - transform(u).reshape(1, -1)).abs().amax(1) > 0
        select = None if bool(used.all()) else torch.eye(m, dtype=DTYPE)[used]
        blocks.append(Block(name, transform, tuple(u.shape), select, int(used.sum())))
    return blocks


def _identity(transform: torch.distributions.Transform) -> bool:
    """Whether ``transform`` is the identity (the unconstraining transform of a real site)."""
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return transform == identity_transform


def _finite(u: torch.Tensor, grad: torch.Tensor, lp: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Infinite potential and zero gradient where either is not finite (the density is zero)."""
    bad = ~torch.isfinite(u) | ~torch.isfinite(grad).all(-1)
    return torch.where(bad, torch.inf, u), torch.where(bad[:, None], 0.0, grad), lp


@dataclass
class Potential:
    """U(z), its gradient and log p(data, x(z)) for a batch of unconstrained positions z (C, D).

    Build it with `build`; ``path`` is ``"vmap"`` or ``"plate"`` (module docstring).
    """

    problem: Problem
    blocks: list[Block]
    path: str
    graph: Callable[..., Any] | None = None   # the compiled potential for this batch size
    fx: Callable[..., Any] | None = None      # the same graph run by Python (traced into a step)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return sum(b.size for b in self.blocks)

    def _unconstrained(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Each site's unconstrained value (..., *ushape) from flat positions (..., D)."""
        parts = z.split([b.size for b in self.blocks], -1)
        return [(part if b.select is None else part @ b.select).reshape(z.shape[:-1] + b.ushape)
                for b, part in zip(self.blocks, parts)]

    def constrain(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Site values (..., *shape) at positions z (..., D)."""
        return {b.name: b.transform(u) for b, u in zip(self.blocks, self._unconstrained(z))}

    def unconstrain(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flat positions (C, D) of site values (C, *shape)."""
        parts = []
        for b in self.blocks:
            u = b.transform.inv(values[b.name].to(DTYPE))
            u = u.reshape(u.shape[0], -1)
            parts.append(u if b.select is None else u @ b.select.T)
        return torch.cat(parts, 1)

    def _values(self, z: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | float]:
        """Site values and log|dx/dz| (leading dims of z) at positions z (..., D)."""
        values, log_jac = {}, 0.0
        for b, u in zip(self.blocks, self._unconstrained(z)):
            if _identity(b.transform):  # a real site: nothing to add
                values[b.name] = u
                continue
            x = b.transform(u)
            log_jac = log_jac + b.transform.log_abs_det_jacobian(u, x).reshape(z.shape[:-1] + (-1,)).sum(-1)
            values[b.name] = x
        return values, log_jac

    def _one(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(data, x(z)) + log|dx/dz| and log p(data, x(z)) of one draw z (D,), as Pyro's
        potential computes them (`Trace.log_prob_sum`)."""
        values, log_jac = self._values(z)
        lp = poutine.trace(poutine.condition(self.problem.model, values)).get_trace().log_prob_sum()
        return lp + log_jac, lp

    def _plate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same for C draws (C, D) at once, the draws an outer plate of the model."""
        n, rank = z.shape[0], self.problem.max_plate_nesting + 1
        values, log_jac = self._values(z)
        conditioned = poutine.condition(self.problem.model,
                                        {k: padded(self.problem, k, v) for k, v in values.items()})
        with vectorised_over(self.problem, n):
            tr = poutine.trace(conditioned).get_trace()
        tr.compute_log_prob()
        terms = []
        for site in tr.nodes.values():
            if site["type"] == "sample":
                s = site["log_prob"]
                s = s.reshape((1,) * (rank - s.dim()) + s.shape) if s.dim() < rank else s
                terms.append(s.expand((n,) + s.shape[1:]).reshape(n, -1).sum(1))
        lp = sum(terms[1:], terms[0])
        return lp + log_jac, lp

    def eager(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """U (C,), dU/dz (C, D) and log p(data, x) (C,) by the model's own code, any batch size."""
        with pyro.validation_enabled(False):
            if self.path == "vmap":
                grad, (total, lp) = torch.func.vmap(torch.func.grad_and_value(self._one, has_aux=True))(z)
                return -total, -grad, lp
            with torch.enable_grad():
                zg = z.detach().requires_grad_(True)
                total, lp = self._plate(zg)
                grad, = torch.autograd.grad(total.sum(), zg)
            return -total.detach(), -grad, lp.detach()

    def robust(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`eager`, where a chain whose evaluation fails numerically (`torch.linalg.LinAlgError`)
        gets an infinite potential; any other error propagates."""
        try:
            return _finite(*self.eager(z))
        except torch.linalg.LinAlgError:
            if z.shape[0] == 1:
                return z.new_full((1,), math.inf), torch.zeros_like(z), z.new_full((1,), math.nan)
            return tuple(torch.cat(parts) for parts in zip(*(self.robust(row[None]) for row in z)))

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """U, dU/dz and log p(data, x) at z (C, D): the compiled graph, replayed by `robust`
        when it raises (TorchScript turns every error into a RuntimeError)."""
        if self.graph is not None and z.shape[0] == self.notes.get("chains"):
            try:
                return _finite(*self.graph(z))
            except RuntimeError:
                pass
        return self.robust(z)

    def compile(self, z: torch.Tensor) -> str | None:
        """Compile `eager` at z into a graph for this batch size (`compile_graph`); None, or
        why the model's own code runs instead (the graph differs from it at z or at a second
        point, where a Python branch on a value took the other way)."""
        start = time.perf_counter()
        try:
            graph, fx = compile_graph(lambda x: self.eager(x), (z,))
        except Exception as e:  # noqa: BLE001 - the model's own code still runs, uncompiled
            return f"not traceable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        self.notes["compile_seconds"] = time.perf_counter() - start
        probe = z + 0.1 * torch.randn(z.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
        for point in (z, probe):
            for a, b in zip(graph(point), self.eager(point)):
                if not torch.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True):
                    return "its traced graph differs from the model at a second point (a Python branch on a value?)"
        self.graph, self.fx, self.notes["chains"] = graph, fx, z.shape[0]
        return None


def pyro_potential(problem: Problem, blocks: list[Block], starts: dict[str, torch.Tensor],
                   valid: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pyro's own potential (`initialize_model`, set up at ``valid``, a point of positive
    density, by default the first start) and its gradient at each start (C, *shape), the
    gradient on the coordinates the blocks keep: (C,), (C, D)."""
    valid = valid or {k: v[0] for k, v in starts.items()}
    _, potential_fn, transforms, _ = initialize_model(problem.model, max_plate_nesting=problem.max_plate_nesting,
                                                      init_strategy=init_to_value(values=valid))
    us, grads = [], []
    for i in range(len(next(iter(starts.values())))):
        params = {b.name: transforms[b.name](starts[b.name][i].to(DTYPE)).detach().requires_grad_(True)
                  for b in blocks}
        with pyro.validation_enabled(False):
            u = potential_fn(params)
        g = torch.autograd.grad(u, list(params.values()), allow_unused=True)
        flat = []
        for b, gi in zip(blocks, g):
            gi = torch.zeros(b.ushape, dtype=DTYPE) if gi is None else gi.to(DTYPE).reshape(-1)
            flat.append(gi.reshape(-1) if b.select is None else b.select @ gi.reshape(-1))
        us.append(u.detach().to(DTYPE))
        grads.append(torch.cat(flat))
    return torch.stack(us), torch.stack(grads)


def disagreement(u: torch.Tensor, grad: torch.Tensor, ref_u: torch.Tensor, ref_grad: torch.Tensor,
                 rtol: float = 1e-6) -> str | None:
    """Why a potential (u, grad) at each chain's start is not Pyro's (ref_u, ref_grad): not
    finite, or off by more than ``rtol`` relative to (1 + |value|); None if it agrees."""
    for i in range(len(u)):
        if not (torch.isfinite(u[i]) and torch.isfinite(grad[i]).all()):
            return f"potential {u[i].item():.6g} (Pyro: {ref_u[i].item():.6g}) is not finite at chain {i}'s start"
        if abs(u[i] - ref_u[i]) > rtol * (1 + abs(ref_u[i])):
            return f"potential {u[i].item():.10g} differs from Pyro's {ref_u[i].item():.10g} at chain {i}'s start"
        err = (grad[i] - ref_grad[i]).abs().max()
        if err > rtol * (1 + ref_grad[i].abs().max()):
            return f"its gradient differs from Pyro's by {err.item():.3g} at chain {i}'s start"
    return None


def build(problem: Problem, starts: dict[str, torch.Tensor]) -> Potential | str:
    """The fastest potential that equals Pyro's at every chain's start (``starts``: site
    values (C, *shape)), or the reason no batched potential can run ``problem``'s model.

    Every path is compiled, checked against Pyro's potential and the model, and timed;
    ``notes`` of the result record the path taken, its time per call, each path's compile
    time and the reasons paths were refused.
    """
    if problem.discrete_sites:
        return f"discrete latent sites ({', '.join(problem.discrete_sites)}) are summed out by Pyro's kernel"
    blocks = blocks_of(problem, {k: v[0] for k, v in starts.items()})
    ref_u, ref_grad = pyro_potential(problem, blocks, starts)
    passed, refused = [], {}
    for path in PATHS:
        pot = Potential(problem, blocks, path)
        z = pot.unconstrain(starts)
        try:
            reason = disagreement(*pot(z)[:2], ref_u, ref_grad)
        except Exception as e:  # noqa: BLE001 - a path the model cannot run is refused with the reason
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        if reason is None:
            uncompiled = pot.compile(z)
            if uncompiled:
                pot.notes["uncompiled"] = uncompiled
            passed.append((pot, z))
        else:
            refused[path] = reason
    if not passed:
        return "no batched potential equals Pyro's: " + "; ".join(f"{p}: {r}" for p, r in refused.items())
    timing = {}
    for pot, z in passed:
        calls = []
        for _ in range(7):
            start = time.perf_counter()
            pot(z)
            calls.append(time.perf_counter() - start)
        timing[pot.path] = 1e3 * min(calls)
    best, _ = min(passed, key=lambda pz: timing[pz[0].path])
    best.notes.update(potential=best.path, potential_ms=timing, refused=refused)
    return best


# ----------------------------------------------------------------------------- dynamics
#
# Every chain's state is a dict of tensors with the chains first. A step takes the state, the
# tuning (step_size (C,), inv_mass, sqrt_mass) and its random numbers (noise (C, D), uniform
# (C, 3)) and returns the next state; ``done`` marks the chains whose iteration ended at this
# step. A draw is packed in one row [z (D) | grad (D) | u | lp | energy] (`pack`), so that
# choosing between draws is one operation: the compiled step is a few hundred small tensor
# operations, whose count, not their arithmetic, sets its time on small models.


def velocity(p: torch.Tensor, inv_mass: torch.Tensor) -> torch.Tensor:
    """M^-1 p for a diagonal (C, D) or dense (C, D, D) inverse mass matrix (p: (C, ..., D))."""
    if inv_mass.dim() == 3:
        flat = p.reshape(p.shape[0], -1, p.shape[-1])
        return (flat @ inv_mass.mT).reshape(p.shape)
    return inv_mass.reshape((p.shape[0],) + (1,) * (p.dim() - 2) + p.shape[-1:]) * p


def mass_sqrt(inv_mass: torch.Tensor) -> torch.Tensor:
    """S with S S^T = M: momentum S eps ~ N(0, M). Diagonal: 1 / sqrt(M^-1); dense: L^-T
    where M^-1 = L L^T (Pyro's `BlockMassMatrix` does the same)."""
    if inv_mass.dim() < 3:
        return inv_mass.rsqrt()
    chol = torch.linalg.cholesky(inv_mass)
    eye = torch.eye(inv_mass.shape[-1], dtype=inv_mass.dtype).expand_as(inv_mass)
    return torch.linalg.solve_triangular(chol.mT, eye, upper=True)


def _momentum(noise: torch.Tensor, sqrt_mass: torch.Tensor) -> torch.Tensor:
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
    sub = torch.where(take.view(c, 1), torch.cat([z, grad, torch.stack([u, lp, energy], 1)], 1), s["sub"])
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
    draw = torch.where(accept.view(c, 1), torch.cat([z, grad, torch.stack([u, lp, energy], 1)], 1), draw)
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


# ----------------------------------------------------------------------------- adaptation


def reasonable_step_size(pot: Potential, z: torch.Tensor, inv_mass: torch.Tensor, gen: torch.Generator,
                         step: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Stan's heuristic for the chains in ``rows`` (a mask) at positions z (C, D): double or
    halve each step size until one leapfrog step's acceptance probability crosses 1/2."""
    u, grad, _ = pot(z)
    p = _momentum(torch.randn(z.shape, generator=gen, dtype=DTYPE), mass_sqrt(inv_mass))
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
    """Each chain's step size and inverse mass matrix, adapted by its own Pyro `WarmupAdapter`
    (the adapter's step size heuristic is `reasonable_step_size`)."""

    def __init__(self, pot: Potential, z: torch.Tensor, gen: torch.Generator, *, num_warmup: int,
                 target_accept: float, dense_mass: bool) -> None:
        c, d = z.shape
        self.pot, self.gen, self.z = pot, gen, z
        self.step_size = torch.ones(c, dtype=DTYPE)
        self.inv_mass = torch.eye(d, dtype=DTYPE).repeat(c, 1, 1) if dense_mass else torch.ones(c, d, dtype=DTYPE)
        self.sqrt_mass = mass_sqrt(self.inv_mass)
        self.adapters = []
        for i in range(c):
            adapter = WarmupAdapter(step_size=1.0, adapt_step_size=True, target_accept_prob=target_accept,
                                    adapt_mass_matrix=True, dense_mass=dense_mass)
            adapter.configure(num_warmup, initial_step_size=1.0, mass_matrix_shape={("z",): self.inv_mass.shape[1:]},
                              find_reasonable_step_size_fn=partial(self._reasonable, i), options={"dtype": DTYPE})
            self.adapters.append(adapter)
            adapter.reset_step_size_adaptation({"z": z[i]})
            self.step_size[i] = adapter.step_size

    def _metric(self, i: int) -> torch.Tensor:
        return self.adapters[i].mass_matrix_adapter.inverse_mass_matrix[("z",)]

    def _reasonable(self, i: int, z: dict[str, torch.Tensor]) -> float:
        """Stan's initial step size for chain ``i`` at ``z["z"]`` under its adapter's metric
        (the other rows of the batch are filler)."""
        rows = torch.arange(len(self.step_size)) == i
        inv = self.inv_mass.clone()
        inv[i] = self._metric(i)
        zs = torch.where(rows[:, None], z["z"], self.z)
        return float(reasonable_step_size(self.pot, zs, inv, self.gen, self.step_size.clone(), rows)[i])

    def update(self, i: int, t: int, z: torch.Tensor, accept: torch.Tensor) -> None:
        """Chain ``i`` finished warm-up iteration ``t`` (0-based) at positions z (C, D)."""
        self.z = z
        before = self._metric(i)
        self.adapters[i].step(t, {"z": z[i]}, accept)
        if self._metric(i) is not before:
            self.inv_mass[i] = self._metric(i)
            self.sqrt_mass[i] = mass_sqrt(self._metric(i)[None])[0]
        self.step_size[i] = self.adapters[i].step_size


# ----------------------------------------------------------------------------- compiling


_aten = torch.ops.aten
_VIEWS = {_aten.view.default, _aten.reshape.default, _aten.expand.default, _aten._unsafe_view.default,
          _aten.alias.default, _aten.detach.default}
_NEUTRAL = {_aten.add.Tensor: 0, _aten.sub.Tensor: 0, _aten.add.Scalar: 0, _aten.sub.Scalar: 0, _aten.mul.Tensor: 1,
            _aten.div.Tensor: 1, _aten.mul.Scalar: 1, _aten.div.Scalar: 1, _aten.pow.Tensor_Scalar: 1}
_ZEROS = {_aten.zeros_like.default, _aten.new_zeros.default, _aten.zeros.default}
_KEEP_ZERO = _VIEWS | {_aten.sum.dim_IntList, _aten.sum.default, _aten.neg.default, _aten.unsqueeze.default,
                       _aten.squeeze.dim, _aten.clone.default}


def simplify(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop the operations of a ``make_fx`` graph that do nothing: a view, reshape or expand
    to the shape it already has, adding 0 (a zero tensor too: an identity transform's log
    Jacobian), multiplying by 1, raising to the power 1 (where no in-place operation follows).
    Each costs microseconds of dispatch on tensors of a few numbers."""
    def val(x: Any) -> torch.Tensor | None:
        v = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        return v if isinstance(v, torch.Tensor) else None

    def in_place_follows(node: torch.fx.Node) -> bool:
        return any(u.op == "call_function" and str(u.target).split(".")[-2].endswith("_") for u in node.users)

    zero: set[torch.fx.Node] = set()
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not node.args:
            continue
        out, src = val(node), val(node.args[0])
        if out is None:
            continue
        if node.target in _ZEROS or (node.target is _aten.full_like.default and node.args[1] == 0) \
                or (node.target in _KEEP_ZERO and node.args[0] in zero):
            zero.add(node)
            continue
        keep = None
        if src is not None and src.shape == out.shape and src.dtype == out.dtype:
            if node.target in _VIEWS:
                keep = node.args[0]
            elif node.target in _NEUTRAL and len(node.args) == 2 and not node.kwargs and not in_place_follows(node) \
                    and (node.args[1] == _NEUTRAL[node.target]
                         or (node.args[1] in zero and node.target in (_aten.add.Tensor, _aten.sub.Tensor))):
                keep = node.args[0]
        if node.target is _aten.add.Tensor and node.args[0] in zero and not in_place_follows(node):
            other = val(node.args[1])
            if other is not None and other.shape == out.shape and other.dtype == out.dtype:
                keep = node.args[1]
        if keep is not None:
            node.replace_all_uses_with(keep)
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def compile_graph(fn: Callable[..., Any], example: tuple[torch.Tensor, ...]) -> tuple[Callable[..., Any], Any]:
    """``fn`` traced at ``example`` into a graph of aten operations (``make_fx``), simplified
    (`simplify`), with its data-only parts computed once (``const_fold``), and run by
    TorchScript's static runtime (an interpreter for straight-line graphs whose overhead per
    operation is lower than TorchScript's own: measured 1.6 against 2.7 ms per NUTS step on
    eight schools), or by TorchScript where the static runtime does not take the graph.
    Returns the compiled graph and the FX module it came from (the same graph run by Python).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation warning, const_fold's notes
        fx = simplify(make_fx(fn)(*example))
        folded = const_fold.split_const_subgraphs(fx)
        folded.run_folding()
        traced = torch.jit.trace(folded, example, check_trace=False)
        if not STATIC_RUNTIME:
            return traced, fx
        try:
            static = torch._C._jit_to_static_module(torch.jit.freeze(traced.eval())._c)
            static(*example)  # a kernel it lacks fails only when run ("varStackFastOut" on bools, one chain)
        except RuntimeError:  # NotImplementedError included
            return traced, fx
    return (lambda *args: tuple(static(*args))), fx


# ----------------------------------------------------------------------------- driver


@dataclass
class Run:
    """Draws and sampler statistics of a batched run."""

    draws: dict[str, np.ndarray]          # site -> (C, S, *shape)
    stats: dict[str, np.ndarray]          # lp, energy, diverging, tree_depth, step_size, n_steps, acceptance_rate: (C, S)
    step_size: np.ndarray                 # (C,) after warm-up
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
    graph, _ = compile_graph(flat, example)
    same = all(torch.equal(a, b) or torch.allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)
               for a, b in zip(graph(*example), flat(*example)))
    return graph if same else None


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
    noise = torch.randn(RNG_BLOCK, c, d, generator=gen, dtype=DTYPE)
    uniform = torch.rand(RNG_BLOCK, c, 3, generator=gen, dtype=DTYPE).log()
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
                noise = torch.randn(RNG_BLOCK, c, d, generator=gen, dtype=DTYPE)
                uniform = torch.rand(RNG_BLOCK, c, 3, generator=gen, dtype=DTYPE).log()
                block = 0
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
    return Run(draws, stats, tuning.step_size.numpy(), evaluations, interrupted, notes)

"""The batched sampler's potential: U(z) and its gradient for every chain at once, checked against Pyro's.

U(z) = -log p(data, x(z)) - log|dx/dz| on the unconstrained space (`torch.distributions.biject_to`
of each site's support; coordinates a transform ignores, such as the upper triangle of a
lower-Cholesky parametrisation, are dropped). Two ways to evaluate it for C chains at once,
each compiled to one graph (`inference.compiled.compile_graph`):

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
"""
from __future__ import annotations

import math
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad
from torch.distributions import biject_to

from zoo.core.problem import DTYPE, Problem
from zoo.inference import compiled
from zoo.inference.common import padded, vectorised_over

PATHS = ("vmap", "plate")


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
        return self._values(z)[0]

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
        for b, u in zip(self.blocks, self._unconstrained(z)):  # a real site adds zeros, which `compiled.simplify` drops
            values[b.name] = x = b.transform(u)
            log_jac = log_jac + b.transform.log_abs_det_jacobian(u, x).reshape(z.shape[:-1] + (-1,)).sum(-1)
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

    def compile(self, z: torch.Tensor) -> str:
        """Compile `eager` at z into a graph for this batch size (`inference.compiled.checked`);
        "", or why the model's own code runs instead (the graph differs from it at z or at a
        second point, where a Python branch on a value took the other way)."""
        start = time.perf_counter()
        probe = z + 0.1 * torch.randn(z.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
        try:
            graphs = compiled.checked(lambda x: self.eager(x), [(z,), (probe,)], tol=1e-9)
        except Exception as e:  # noqa: BLE001 - the model's own code still runs, uncompiled
            return f"not traceable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        if graphs is None:
            return "its traced graph differs from the model at a second point (a Python branch on a value?)"
        (self.graph, self.fx), self.notes["chains"] = graphs, z.shape[0]
        self.notes["compile_seconds"] = time.perf_counter() - start
        return ""


def pyro_potential(problem: Problem, blocks: list[Block], starts: dict[str, torch.Tensor],
                   valid: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pyro's own potential (`initialize_model`, set up at ``valid``, a point of positive
    density, by default the first start) and its gradient (`pyro.ops.integrator.potential_grad`)
    at each start (C, *shape), the gradient on the coordinates the blocks keep: (C,), (C, D)."""
    valid = valid or {k: v[0] for k, v in starts.items()}
    _, potential_fn, transforms, _ = initialize_model(problem.model, max_plate_nesting=problem.max_plate_nesting,
                                                      init_strategy=init_to_value(values=valid))
    us, grads = [], []
    for i in range(len(next(iter(starts.values())))):
        with pyro.validation_enabled(False):
            g, u = potential_grad(potential_fn, {b.name: transforms[b.name](starts[b.name][i].to(DTYPE))
                                                 for b in blocks})
        us.append(u)
        grads.append(torch.cat([g[b.name].reshape(-1) if b.select is None else b.select @ g[b.name].reshape(-1)
                                for b in blocks]))
    return torch.stack(us).to(DTYPE), torch.stack(grads).to(DTYPE)


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

    Every path is checked against Pyro's potential and timed as the model's own code (best of
    seven calls); the fastest is compiled (`Potential.compile`). Compiling every path and
    timing the graphs picked the same path or one as fast (compiled calls of 0.07-0.14 ms
    either way on normal_gamma, beta_bernoulli, bayesian_linear_regression,
    linear_gaussian_ssm, eight schools; the plate path's own code is the faster wherever it
    applies) at 0.1-0.5 s of compilation per path. ``notes`` of the result record the path
    taken, each path's time per call uncompiled, the compile time and the reasons paths were
    refused.
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
            passed.append((pot, z))
        else:
            refused[path] = reason
    if not passed:
        return "no batched potential equals Pyro's: " + "; ".join(f"{p}: {r}" for p, r in refused.items())
    timing = {pot.path: 1e3 * min(timeit.repeat(lambda: pot(z), number=1, repeat=7)) for pot, z in passed}
    best, z = min(passed, key=lambda pz: timing[pz[0].path])
    best.notes.update(potential=best.path, potential_ms=timing, refused=refused, uncompiled=best.compile(z))
    return best

"""The ``nuts`` and ``hmc`` back-ends: one factory (`backend`), two samplers.

Two samplers run them (option ``sampler``): ``batched`` (`inference.batched`: every chain in
one compiled torch computation, several times faster than Pyro's kernels on small models) and
``pyro`` (Pyro's own NUTS/HMC kernels, one chain at a time). ``auto`` (default) takes
``batched`` where its potential equals Pyro's at every chain's start (`potential.build`) and
Pyro's kernel otherwise: the reason is in ``diagnostics["fallback"]``, and a warning says it
where the model's own code stood in the way (not for discrete sites, which Pyro's kernel is
there to sum out, nor for a checkpoint directory). ``diagnostics["potential"]`` names the path
the potential took: ``"vmap"``, ``"plate"`` or ``"pyro"``.

Every run records per draw, as (chain, draw) arrays in ``Fit.sample_stats``: ``lp`` (log
p(data, latents) at the draw, discrete sites summed out), ``energy`` (the Hamiltonian at the
draw: potential plus kinetic energy of its momentum), ``diverging``, ``tree_depth``
(subtrees tried; 0 for HMC), ``step_size``, ``n_steps`` (leapfrog steps) and
``acceptance_rate`` (NUTS: mean acceptance probability over the trajectory; HMC: the
Metropolis probability).

With Pyro's kernels: discrete latent sites are summed out by enumeration inside the potential
(Pyro's NUTS does this given ``max_plate_nesting``), and their draws are rebuilt from each draw
of the continuous sites with ``infer_discrete``. Chains run one after another in this process,
each with its own seed derived from the run's seed: on a 2-core machine Pyro would run them
sequentially anyway (it counts cpu_count() - 1 usable CPUs), and separate runs keep each chain
reproducible on its own. Both samplers start each chain at `inference.common.init_values`.
"""
from __future__ import annotations

import math
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import HMC, MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_value
from tqdm.auto import tqdm

from zoo.core.errors import ZooError
from zoo.core.files import atomic_write
from zoo.core.problem import Problem
from zoo.core.spec import Backend, Fit
from zoo.inference import batched, potential, reparam
from zoo.inference.common import (
    chain_seeds,
    complete_draws,
    enumerated,
    init_values,
    log_densities,
    needs_continuous,
    run_key,
    seed_all,
    to_chains,
)

STATS = ("lp", "energy", "diverging", "tree_depth", "step_size", "n_steps", "acceptance_rate")


def numerical_failure(error: Exception) -> bool:
    """Whether an error of the potential is a numerical failure at one point: a
    `torch.linalg.LinAlgError` (the Cholesky factor of an overflowing matrix), also when
    TorchScript re-raised it as a RuntimeError carrying its message (read as Pyro's own
    handler reads it)."""
    msg = str(error)
    return isinstance(error, torch.linalg.LinAlgError) or (
        isinstance(error, RuntimeError) and "TorchScript" in msg
        and ("singular" in msg or "not positive-definite" in msg))


class Recorded:
    """Mixin for Pyro's HMC and NUTS kernels: a potential that fails numerically at a point
    returns NaN (rejected as a divergence) and other errors propagate; each iteration's
    statistics (`STATS` but ``lp``) are appended to ``records``.

    Pyro catches numerical failures itself but then leaves ``requires_grad`` set on the
    position and the next leapfrog step crashes ("you can only change requires_grad flags of
    leaf variables"), as seen with HMC on ``mvn_wishart``.
    """

    def _initialize_model_properties(self, model_args, model_kwargs):
        super()._initialize_model_properties(model_args, model_kwargs)
        potential = self.potential_fn

        def safe(z):
            try:
                u = potential(z)
            except RuntimeError as e:
                if not numerical_failure(e):
                    raise
                u = sum((v * 0).sum() for v in z.values()) + math.nan
            self._last_potential = float(u.detach())
            return u

        self.potential_fn = safe
        self.records: list[dict[str, float]] = []

    def _sample_r(self, name):
        r, r_unscaled = super()._sample_r(name)
        self._start_energy = float(self._kinetic_energy(r_unscaled) + self._potential_energy_last)
        return r, r_unscaled

    def _kinetic_energy(self, r_unscaled):
        self._last_kinetic = super()._kinetic_energy(r_unscaled)
        return self._last_kinetic

    def _accept(self, energy: float) -> float:
        """Pyro's acceptance probability of a point of Hamiltonian ``energy``: 0 where NaN."""
        return math.exp(min(0.0, self._start_energy - energy)) if energy == energy else 0.0

    def sample(self, params):
        before, divergences = self._z_last, len(self._divergences)
        self._leaves: list[tuple[dict, float]] = []
        self._depth = 0
        z = super().sample(params)
        if isinstance(self, NUTS):
            energy = next((e for leaf, e in reversed(self._leaves) if leaf is self._z_last), self._start_energy)
            accept = sum(self._accept(e) for _, e in self._leaves) / max(len(self._leaves), 1)
            steps = len(self._leaves)
        else:
            proposal = self._last_potential + float(self._last_kinetic)
            accept = self._accept(proposal)
            energy = proposal if self._z_last is not before else self._start_energy
            steps = self.num_steps
        self.records.append({"energy": energy, "acceptance_rate": accept, "diverging": len(self._divergences) > divergences,
                             "tree_depth": self._depth, "n_steps": steps, "step_size": float(self.step_size)})
        return z


class RecordedNUTS(Recorded, NUTS):
    """Pyro's NUTS with numerical failures rejected and per-iteration statistics (`Recorded`)."""

    def _build_basetree(self, z, r, z_grads, log_slice, direction, energy_current):
        tree = super()._build_basetree(z, r, z_grads, log_slice, direction, energy_current)
        self._leaves.append((tree.z_proposal, float(tree.z_proposal_pe + self._kinetic_energy(tree.r_right_unscaled))))
        return tree

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):
        self._depth = max(self._depth, tree_depth + 1)
        return super()._build_tree(z, r, z_grads, log_slice, direction, tree_depth, energy_current)


class FixedStepsHMC(Recorded, HMC):
    """Pyro's HMC, but with ``num_steps`` leapfrog steps whatever the adapted step size.

    Pyro's own HMC turns ``num_steps`` into a trajectory length and then takes
    trajectory_length / step_size steps, which on a hard edge (step size 1e-5) meant hundreds
    of thousands of steps per iteration. Numerical failures are rejected (`Recorded`).
    """

    def __init__(self, model, *, num_steps: int, **kwargs):
        self._fixed_num_steps = num_steps
        super().__init__(model, num_steps=num_steps, **kwargs)

    @property
    def num_steps(self) -> int:
        return self._fixed_num_steps


def _pyro_kernel(algo: str, model, *, target_accept: float, dense_mass: bool, jit: bool, init_strategy,
                 max_plate_nesting: int, max_tree_depth: int = 10, num_leapfrog: int = 10):
    """Pyro's kernel for ``algo`` with the back-end's options."""
    common = {"target_accept_prob": target_accept, "full_mass": dense_mass, "jit_compile": jit,
              "ignore_jit_warnings": True, "init_strategy": init_strategy, "max_plate_nesting": max_plate_nesting}
    if algo == "nuts":
        return RecordedNUTS(model, max_tree_depth=max_tree_depth, **common)
    return FixedStepsHMC(model, num_steps=num_leapfrog, **common)


def fit(algo: str, problem: Problem, *, seed: int, num_samples: int, num_warmup: int, num_chains: int,
        target_accept: float, sampler: str, dense_mass: bool, jit: bool, checkpoint: str, progress: bool | None,
        init_radius: float, noncentered: str, **tree: int) -> Fit:
    """Run ``num_chains`` chains of ``algo`` (``"nuts"`` or ``"hmc"``; ``tree``: its
    ``max_tree_depth`` or ``num_leapfrog``) with the batched sampler or Pyro's kernel, each
    chain started uniform(-init_radius, init_radius) on the unconstrained scale (Stan's
    ``init``, `inference.common.init_values`); the sites named in ``noncentered`` are sampled
    non-centred and their draws computed back (`inference.reparam`)."""
    decentre = reparam.site_names(problem, noncentered)
    if decentre:
        inner = reparam.noncentred(problem, decentre)
        out = fit(algo, inner, seed=seed, num_samples=num_samples, num_warmup=num_warmup, num_chains=num_chains,
                  target_accept=target_accept, sampler=sampler, dense_mass=dense_mass, jit=jit, checkpoint=checkpoint,
                  progress=progress, init_radius=init_radius, noncentered="", **tree)
        return reparam.restore(problem, inner, out, decentre)
    seeds = chain_seeds(seed, num_chains)
    reason, starts = None, None
    if sampler != "pyro":
        if checkpoint:
            reason = "a checkpoint directory keeps finished chains, which Pyro's kernel runs one at a time"
        elif problem.discrete_sites:
            reason = f"discrete latent sites ({', '.join(problem.discrete_sites)}) are summed out by Pyro's kernel"
        else:
            starts = [init_values(problem, s, init_radius) for s in seeds]
            pot = potential.build(problem, {k: torch.stack([st[k] for st in starts]) for k in starts[0]})
            if isinstance(pot, str):
                reason = pot
                if sampler == "auto":
                    warnings.warn(f"model {problem.name!r}, back-end {algo!r}: the batched sampler cannot run this "
                                  f"model ({reason}); running Pyro's kernel one chain at a time instead",
                                  RuntimeWarning, stacklevel=3)
        if reason is not None and sampler == "batched":
            raise ZooError(f"model {problem.name!r}: the batched sampler does not apply: {reason}; use sampler='pyro'")
    settings = {"kernel": algo, "target_accept": target_accept, "jit": jit, "dense_mass": dense_mass,
                "init_radius": init_radius, **tree}
    if sampler == "pyro" or reason is not None:
        kernel = partial(_pyro_kernel, algo, target_accept=target_accept, dense_mass=dense_mass, jit=jit, **tree)
        out = run_chains(problem, kernel, seed=seed, num_samples=num_samples, num_warmup=num_warmup,
                         num_chains=num_chains, progress=progress, checkpoint=checkpoint, settings=settings,
                         starts=starts, init_radius=init_radius)
        if reason is not None:
            out.diagnostics["fallback"] = reason
        return out
    return run_batched(problem, pot, batched.SAMPLERS[algo](**tree), starts, seed=seeds[0], num_samples=num_samples,
                       num_warmup=num_warmup, target_accept=target_accept, dense_mass=dense_mass, progress=progress)


def run_batched(problem: Problem, pot: potential.Potential, algorithm: batched.Algorithm,
                starts: list[dict[str, torch.Tensor]], *, seed: int, num_samples: int, num_warmup: int,
                target_accept: float, dense_mass: bool, progress: bool | None) -> Fit:
    """All chains as one batch (`inference.batched.sample`) from their ``starts``."""
    init = pot.unconstrain({k: torch.stack([st[k] for st in starts]) for k in problem.sites})
    run = batched.sample(pot, init, algorithm, seed=seed, num_warmup=num_warmup, num_samples=num_samples,
                         target_accept=target_accept, dense_mass=dense_mass, progress=bool(progress))
    drawn = run.stats["diverging"].shape[1]
    note = f"{len(starts)} chains run as one batch (batched sampler, {pot.path} potential)"
    if run.interrupted:
        note = f"interrupted: {drawn} of {num_samples} draws per chain (Ctrl-C)"
        warnings.warn(f"model {problem.name!r}: {note}; returning the draws made so far", RuntimeWarning,
                      stacklevel=3)
    notes = run.notes
    return mcmc_fit(run.draws, run.stats, gradient_evaluations=run.gradient_evaluations, sampler="batched",
                    potential=pot.path, potential_ms=notes["potential_ms"], refused_paths=notes["refused"],
                    compile_seconds=notes.get("compile_seconds", 0.0) + notes["step_compile_seconds"],
                    uncompiled=notes["uncompiled"], chains=note)


def mcmc_fit(posterior: dict[str, np.ndarray], stats: dict[str, np.ndarray], **diagnostics: Any) -> Fit:
    """A `Fit` of (chain, draw) draws and statistics (`STATS`), with the diagnostics every MCMC
    run reports (divergences, each chain's mean acceptance rate and final step size) and ``diagnostics``."""
    return Fit(posterior=posterior, sample_stats={k: stats[k] for k in STATS},
               diagnostics={"divergences": int(stats["diverging"].sum()),
                            "acceptance_rate": [float(a) for a in stats["acceptance_rate"].mean(1)],
                            "step_size": [float(e) for e in stats["step_size"][:, -1]], **diagnostics})


def _one_chain(problem: Problem, model, make_kernel, start: dict[str, torch.Tensor], chain_seed: int,
               num_samples: int, num_warmup: int, progress: bool | None) -> dict[str, np.ndarray]:
    """One chain: draws of the continuous sites and ``_<stat>`` arrays of its statistics."""
    seed_all(chain_seed)
    kernel = make_kernel(model, init_strategy=init_to_value(values=start),
                         max_plate_nesting=problem.max_plate_nesting)
    # Pyro's own bar sits at position 0 and stays: under an outer bar (compare) it would
    # overwrite it. A bar of ours nests below the outer one and goes when the chain is done.
    bar = tqdm(total=num_warmup + num_samples, desc="chain (Pyro kernel)", leave=False,
               disable=not progress)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, num_chains=1,
                disable_progbar=True, hook_fn=lambda *_: bar.update())
    with pyro.validation_enabled(False), bar:
        mcmc.run()
    samples = mcmc.get_samples()
    out = {k: samples[k].detach().reshape((num_samples,) + problem.sites[k].shape).numpy()
           for k in problem.latent_sites if not problem.sites[k].discrete}
    records = kernel.records[-num_samples:]
    out.update({f"_{k}": np.array([r[k] for r in records]) for k in STATS if k != "lp"})
    return out


def run_chains(problem: Problem, make_kernel, *, seed: int, num_samples: int, num_warmup: int,
               num_chains: int, progress: bool | None, checkpoint: str = "",
               settings: dict[str, Any] | None = None, starts: list[dict[str, torch.Tensor]] | None = None,
               init_radius: float = 2.0) -> Fit:
    """Run ``num_chains`` chains of the kernel ``make_kernel(model, ...)`` one after another.

    Durability: the chain is the chunk. With ``checkpoint`` (a directory) every finished chain
    is written there atomically, and a re-run with the same model, data, settings and seed
    takes finished chains from disk and runs only the rest: a killed process loses at most
    the chain it was running. Ctrl-C (KeyboardInterrupt) returns the chains finished so far.
    """
    model = enumerated(problem)
    store = ChainStore(checkpoint, problem, {**(settings or {}), "seed": seed, "num_samples": num_samples,
                                            "num_warmup": num_warmup}) if checkpoint else None
    chains, interrupted = [], False
    for i, chain_seed in enumerate(chain_seeds(seed, num_chains)):
        chain = store.load(i) if store else None
        if chain is None:
            try:
                start = starts[i] if starts else init_values(problem, chain_seed, init_radius)
                chain = _one_chain(problem, model, make_kernel, start, chain_seed, num_samples, num_warmup, progress)
            except KeyboardInterrupt:
                if not chains:
                    raise
                interrupted = True
                break
            if store:
                store.save(i, chain)
        chains.append(chain)
    flat = {k: np.concatenate([c[k] for c in chains]) for k in chains[0] if not k.startswith("_")}
    stats = {k: np.stack([c[f"_{k}"] for c in chains]) for k in STATS if k != "lp"}
    stats["lp"] = log_densities(problem, flat)[0].reshape(len(chains), -1)
    note = f"{len(chains)} chains run sequentially in one process"
    if interrupted:
        note = f"interrupted: {len(chains)} of {num_chains} chains finished (Ctrl-C)"
        warnings.warn(f"model {problem.name!r}: {note}; returning the finished chains", RuntimeWarning, stacklevel=3)
    return mcmc_fit(to_chains(complete_draws(problem, flat), len(chains)), stats,
                    gradient_evaluations=int(stats["n_steps"].sum()), sampler="pyro", potential="pyro", chains=note)


class ChainStore:
    """Finished chains as ``chain_<i>.npz`` files in a directory, tagged with what made them."""

    def __init__(self, directory: str, problem: Problem, settings: dict[str, Any]) -> None:
        self.dir = Path(directory)
        self.key = run_key(problem, settings)
        self.where = f"model {problem.name!r}, checkpoint {str(self.dir)!r}: "

    def _path(self, i: int) -> Path:
        return self.dir / f"chain_{i}.npz"

    def load(self, i: int) -> dict[str, np.ndarray] | None:
        path = self._path(i)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as f:
            if str(f["_key"]) != self.key:
                raise ZooError(f"{self.where}{path.name} was made by another run (other data, options "
                               "or seed); use another directory or delete it")
            return {k: f[k] for k in f.files if k != "_key"}

    def save(self, i: int, chain: dict[str, np.ndarray]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, _key=np.array(self.key), **chain)
        atomic_write(self._path(i), write)


# jit: Pyro's kernel traces its potential with torch.jit (the batched sampler always compiles
# its potential, and runs the model's own code where the trace disagrees with it).
MCMC_OPTIONS: dict[str, Any] = {"num_samples": 500, "num_warmup": 500, "num_chains": 4,
                                "target_accept": 0.8, "sampler": "auto", "dense_mass": False, "jit": False,
                                "checkpoint": "", "progress": None, "init_radius": 2.0,
                                "noncentered": ""}
MCMC_CHOICES: dict[str, tuple[str, ...]] = {"sampler": ("auto", "batched", "pyro")}
ALGORITHMS: dict[str, tuple[dict[str, int], str]] = {
    "nuts": ({"max_tree_depth": 10}, "No-U-Turn Hamiltonian Monte Carlo, several chains (batched)"),
    "hmc": ({"num_leapfrog": 10}, "Hamiltonian Monte Carlo, fixed number of leapfrog steps, several chains"),
}


def backend(algo: str) -> Backend:
    """The back-end running ``algo`` (``"nuts"`` or ``"hmc"``): `fit` with its options."""
    options, summary = ALGORITHMS[algo]
    return Backend(name=algo, fit=partial(fit, algo), options={**MCMC_OPTIONS, **options}, choices=MCMC_CHOICES,
                   summary=summary, applicable=needs_continuous)

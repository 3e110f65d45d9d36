"""Shared driver of the ``nuts`` and ``hmc`` back-ends.

Two samplers run them (option ``sampler``): ``batched`` (`inference.batched`: every chain in
one batched torch computation, several times faster than Pyro's kernels on the zoo's small
models) and ``pyro`` (Pyro's own NUTS/HMC kernels, one chain at a time). ``auto`` (default)
takes ``batched`` where it applies (every latent site continuous, the model broadcasts
against an outer plate of chains, no ``checkpoint``) and ``pyro`` otherwise.

With Pyro's kernels: discrete latent sites are summed out by enumeration inside the potential (Pyro's NUTS does
this given ``max_plate_nesting``), and their draws are rebuilt from each draw of the
continuous sites with ``infer_discrete``. Each chain starts by Stan's rule with its own seed (`inference.common.init_values`).
Chains run one after another in this process, each with its own seed derived from the run's
seed: on a 2-core machine Pyro would run them sequentially anyway (it counts cpu_count() - 1
usable CPUs), and separate runs keep each chain reproducible on its own.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import MCMC
from pyro.infer.autoguide.initialization import init_to_value
from tqdm.auto import tqdm

from zoo.core.errors import ZooError
from zoo.core.files import atomic_write
from zoo.core.problem import Problem
from zoo.core.spec import Fit
from zoo.inference import batched
from zoo.inference.common import (
    chain_seeds,
    complete_draws,
    enumerated,
    init_values,
    run_key,
    seed_all,
    to_chains,
)


class SafePotential:
    """Mixin for Pyro's HMC kernels: a potential that fails numerically (a Cholesky factor of
    an overflowing precision matrix) returns NaN, which the sampler rejects as a divergence.

    Pyro catches such errors itself but then leaves ``requires_grad`` set on the position and
    the next leapfrog step crashes ("you can only change requires_grad flags of leaf
    variables"), as seen with HMC on ``mvn_wishart``.
    """

    def _initialize_model_properties(self, model_args, model_kwargs):
        super()._initialize_model_properties(model_args, model_kwargs)
        potential = self.potential_fn

        def safe(z):
            try:
                return potential(z)
            except (RuntimeError, ValueError):
                return sum((v * 0).sum() for v in z.values()) + float("nan")

        self.potential_fn = safe


def run_sampler(problem: Problem, make_kernel, batched_transition, *, sampler: str, seed: int,
                num_samples: int, num_warmup: int, num_chains: int, target_accept: float, dense_mass: bool,
                checkpoint: str, progress: bool | None, settings: dict[str, Any]) -> Fit:
    """Run the chains with the batched sampler or Pyro's kernel (see the module docstring)."""
    pot = None
    if sampler != "pyro":
        reason = "a checkpoint directory is kept per chain by Pyro's kernel" if checkpoint else None
        pot = batched.BatchedPotential.build(problem) if reason is None else reason
        if isinstance(pot, str):
            if sampler == "batched":
                raise ZooError(f"model {problem.name!r}: the batched sampler does not apply: {pot}; "
                               "use sampler='pyro'")
            pot = None
    if pot is None:
        return run_chains(problem, make_kernel, seed=seed, num_samples=num_samples, num_warmup=num_warmup,
                          num_chains=num_chains, progress=progress, checkpoint=checkpoint,
                          settings={**settings, "dense_mass": dense_mass})
    return run_batched(problem, pot, batched_transition, seed=seed, num_samples=num_samples,
                       num_warmup=num_warmup, num_chains=num_chains, target_accept=target_accept,
                       dense_mass=dense_mass, progress=progress)


def run_batched(problem: Problem, pot: batched.BatchedPotential, transition, *, seed: int, num_samples: int,
                num_warmup: int, num_chains: int, target_accept: float, dense_mass: bool,
                progress: bool | None) -> Fit:
    """All chains as one batch (`inference.batched.sample`), each starting from its own
    Stan-rule start (`inference.common.init_values`)."""
    seeds = chain_seeds(seed, num_chains)
    starts = [init_values(problem, s) for s in seeds]
    init = pot.unconstrain({k: torch.stack([st[k] for st in starts]) for k in problem.sites})
    run = batched.sample(pot, init, transition, seed=seeds[0], num_warmup=num_warmup, num_samples=num_samples,
                         target_accept=target_accept, dense_mass=dense_mass, progress=bool(progress))
    drawn = run.stats["diverging"].shape[1]
    note = f"{num_chains} chains run as one batch (batched sampler)"
    if run.interrupted:
        note = f"interrupted: {drawn} of {num_samples} draws per chain (Ctrl-C)"
        warnings.warn(f"model {problem.name!r}: {note}; returning the draws made so far", RuntimeWarning,
                      stacklevel=3)
    return Fit(
        posterior=run.draws,
        sample_stats=run.stats,
        diagnostics={"divergences": int(run.stats["diverging"].sum()),
                     "acceptance_rate": [float(a) for a in run.stats["acceptance_rate"].mean(1)],
                     "step_size": [float(e) for e in run.step_size],
                     "gradient_evaluations": run.gradient_evaluations, "sampler": "batched", "chains": note},
    )


def _one_chain(problem: Problem, model, make_kernel, chain_seed: int, num_samples: int, num_warmup: int,
               progress: bool | None) -> dict[str, np.ndarray]:
    """One chain: draws of the continuous sites, ``_diverging`` and ``_accept``."""
    init = init_to_value(values=init_values(problem, chain_seed))
    seed_all(chain_seed)
    kernel = make_kernel(model, init_strategy=init, max_plate_nesting=problem.max_plate_nesting)
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
    diagnostics = mcmc.diagnostics()
    out["_diverging"] = np.zeros(num_samples, dtype=bool)
    out["_diverging"][[int(i) for i in diagnostics["divergences"]["chain 0"]]] = True
    out["_accept"] = np.array(float(diagnostics["acceptance rate"]["chain 0"]))
    return out


def run_chains(problem: Problem, make_kernel, *, seed: int, num_samples: int, num_warmup: int,
               num_chains: int, progress: bool | None, checkpoint: str = "",
               settings: dict[str, Any] | None = None) -> Fit:
    """Run ``num_chains`` chains of the kernel ``make_kernel(model)`` one after another.

    Durability: the chain is the chunk. With ``checkpoint`` (a directory) every finished chain
    is written there atomically, and a re-run with the same model, data, settings and seed
    takes finished chains from disk and runs only the rest: a killed process loses at most
    the chain it was running. Ctrl-C (KeyboardInterrupt) returns the chains finished so far.
    """
    model = enumerated(problem) if problem.discrete_sites else problem.model
    store = ChainStore(checkpoint, problem, {**(settings or {}), "seed": seed, "num_samples": num_samples,
                                            "num_warmup": num_warmup}) if checkpoint else None
    chains, interrupted = [], False
    for i, chain_seed in enumerate(chain_seeds(seed, num_chains)):
        chain = store.load(i) if store else None
        if chain is None:
            try:
                chain = _one_chain(problem, model, make_kernel, chain_seed, num_samples, num_warmup, progress)
            except KeyboardInterrupt:
                if not chains:
                    raise
                interrupted = True
                break
            if store:
                store.save(i, chain)
        chains.append(chain)
    flat = {k: np.concatenate([c[k] for c in chains]) for k in chains[0] if not k.startswith("_")}
    diverging = np.stack([c["_diverging"] for c in chains])
    note = f"{len(chains)} chains run sequentially in one process"
    if interrupted:
        note = f"interrupted: {len(chains)} of {num_chains} chains finished (Ctrl-C)"
        warnings.warn(f"model {problem.name!r}: {note}; returning the finished chains", RuntimeWarning, stacklevel=3)
    return Fit(
        posterior=to_chains(complete_draws(problem, flat), len(chains)),
        sample_stats={"diverging": diverging},
        diagnostics={"divergences": int(diverging.sum()), "acceptance_rate": [float(c["_accept"]) for c in chains],
                     "sampler": "pyro", "chains": note},
    )


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


# jit: Pyro's kernel traces its potential with torch.jit (the batched sampler always traces,
# and keeps the eager code where the trace disagrees with the model).
MCMC_OPTIONS: dict[str, Any] = {"num_samples": 500, "num_warmup": 500, "num_chains": 4,
                                "target_accept": 0.8, "sampler": "auto", "dense_mass": False, "jit": False,
                                "checkpoint": "", "progress": None}
MCMC_CHOICES: dict[str, tuple[str, ...]] = {"sampler": ("auto", "batched", "pyro")}

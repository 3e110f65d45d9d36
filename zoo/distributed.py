"""Data-parallel SVI across processes with ``torch.distributed`` (gloo), launched by torchrun.

Each process holds the whole data set but scores only its shard (contiguous rows of every data
key whose first dimension is the observations' ``N``). Inside the data plates its log densities
are scaled by the number of processes R, so the mean over processes of their losses is exactly
the full-data loss::

    (1/R) sum_r [log p(theta) + R log p(x_r | theta) - log q(theta)] = log p(theta, x) - log q(theta)

The training loop is ``svi``'s own (`zoo.inference.svi.fit_guide`), given the scaled shard
as its model and an optimiser that averages every gradient with ``all_reduce`` before its
step. Every process draws the same guide noise (same seed), so each step equals the
one-process step on all the data up to floating-point summation order: R processes give the
single-process answer, each doing 1/R of the likelihood work. Starting values are
`inference.common.optimiser_start` on all the data, identical everywhere.

Run it on one machine::

    torchrun --standalone --nproc_per_node=2 -m zoo.distributed logistic_regression \\
        --num-steps 1000 --out out/lr_svi.nc

and on a cluster, the same command on every node with torchrun's rendezvous flags
(``--nnodes=2 --node_rank=0|1 --master_addr=HOST --master_port=29500``); the gloo backend
needs only TCP between the nodes. Rank 0 writes the result (`zoo.load` reads it).

Only models whose latent sites are all global apply (local latents would need sharding of
their own); the model-specific guides are not used.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pyro.poutine.scale_messenger import ScaleMessenger

from zoo import api, registry
from zoo.core.errors import ZooError
from zoo.core.problem import Problem, float64, prepare, trace_model
from zoo.core.spec import Backend, Fit
from zoo.inference import svi
from zoo.inference.common import sample_vectorised, seed_all, single_thread, to_chains
from zoo.results import Result, execute


class _ScaleDataPlates(ScaleMessenger):
    """Multiply the log density of every sample site inside the given plates by ``scale``."""

    def __init__(self, scale: float, plates: set[str]) -> None:
        super().__init__(scale)
        self.plates = plates

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and any(f.name in self.plates for f in msg["cond_indep_stack"]):
            super()._process_message(msg)


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def shard(problem: Problem, rank: int, world: int) -> dict[str, np.ndarray]:
    """Rank ``rank``'s contiguous rows of every data key indexed by the observations' first dim."""
    first = {problem.spec.data[k].dims[0] for k in problem.observed if problem.spec.data[k].dims}
    out = {}
    for k, v in problem.np_data.items():
        dims = problem.spec.data[k].dims
        out[k] = np.array_split(v, world)[rank] if dims and dims[0] in first else v
    return out


def _data_plates(problem: Problem, data: Mapping[str, Any]) -> set[str]:
    tr = trace_model(problem.spec, data, problem.hyper)
    return {f.name for name in problem.observed for f in tr.nodes[name]["cond_indep_stack"]}


def _check(problem: Problem, plates: set[str], world: int) -> None:
    local = [k for k in problem.sites if k not in problem.spec.latent_sites or problem.sites[k].discrete]
    if local:
        raise ZooError(f"model {problem.name!r}: data-parallel SVI needs every latent site global; "
                       f"{local} are local to the data")
    if not plates:
        raise ZooError(f"model {problem.name!r}: its observations sit in no plate, so they cannot be sharded")
    n = min(len(v) for k, v in problem.np_data.items() if k in problem.observed)
    if n < world:
        raise ZooError(f"model {problem.name!r}: {n} observations cannot be split over {world} processes")


def _average(tensor: torch.Tensor) -> None:
    """Replace ``tensor`` in place by its mean over the processes of the group."""
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()


def fit_data_parallel(name: str, data: Mapping[str, Any] | None = None, hyper: Mapping[str, Any] | None = None,
                      seed: int = 0, guide: str = "mean_field", num_steps: int = 1000, lr: float = 0.05,
                      lr_decay: float = 0.02, num_samples: int = 1000, num_chains: int = 4,
                      converge: bool = False) -> Result:
    """SVI on ``name`` with the data split over the processes of the current process group.

    The training is `zoo.inference.svi.fit_guide` itself, given this process's shard of the
    data (its likelihood scaled by the number of processes) as the model and the mean over
    processes (``all_reduce``) for every gradient and loss. ``converge=False`` (default) runs
    exactly ``num_steps`` steps; ``converge=True`` the convergence rule of ``svi``, whose
    decisions agree on every process because every process sees the same averaged numbers.
    Without an initialised process group this is plain one-process SVI with the same steps,
    the reference the distributed run reproduces. Every process returns the same `Result`.
    """
    spec = registry.get_model(name)
    full, _ = api.prepare_problem(spec, data, hyper)
    rank, world = _world()
    if guide not in svi.GUIDES:
        raise ZooError(f"model {name!r}: guide {guide!r} is not one of {', '.join(svi.GUIDES)}")
    part = prepare(spec, shard(full, rank, world), full.np_hyper)
    plates = _data_plates(part, part.data)
    _check(full, plates, world)

    def model() -> Any:
        with _ScaleDataPlates(float(world), plates):
            return part.model()

    start = time.perf_counter()
    with single_thread(), float64():
        trained = svi.fit_guide(full, guide=guide, seed=seed, num_steps=num_steps, lr=lr, lr_decay=lr_decay,
                                num_particles=1, progress=False, converge=converge, model=model,
                                average=_average if world > 1 else None)
        seed_all(seed + 1)
        draws = sample_vectorised(full, trained.guide, num_chains * num_samples)
    seconds = time.perf_counter() - start
    fit = Fit(posterior=to_chains(draws, num_chains),
              diagnostics={"elbo_trace": trained.trace, "steps": len(trained.trace), "guide": guide,
                           "converged": trained.converged, "processes": world,
                           "note": f"data-parallel SVI over {world} process(es)"}, kind="independent")
    backend = Backend(name="svi", fit=lambda problem, seed: fit, options={})
    result = execute(full, backend, {}, seed, f"svi (data-parallel x{world})")
    result.seconds = seconds
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``torchrun ... -m zoo.distributed NAME``."""
    parser = argparse.ArgumentParser(prog="python -m zoo.distributed", description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guide", default="mean_field")
    parser.add_argument("--num-steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--converge", action="store_true",
                        help="stop by svi's convergence rule (num-steps is then a cap)")
    parser.add_argument("--out", help="netCDF file rank 0 writes the result to")
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group("gloo")
    try:
        result = fit_data_parallel(args.model, seed=args.seed, guide=args.guide, num_steps=args.num_steps,
                                   lr=args.lr, num_samples=args.num_samples, converge=args.converge)
        if _world()[0] == 0:
            if args.out:
                result.save(args.out)
            print(f"{result.backend}: {result.seconds:.2f} s, final ELBO {result.diagnostics['elbo_trace'][-1]:.3f}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Back-end ``enum``: exact marginalisation of discrete latent sites (CONCEPTS.md E).

The discrete sites (mixture assignments) are summed out of the ELBO exactly with
``TraceEnum_ELBO``; a guide (family ``guide``, as in ``svi``) covers the continuous sites.
The discrete sites' draws are then rebuilt for each draw of the continuous ones with
``infer_discrete``: sampled from their exact conditional posterior (``assignments="sample"``)
or the most probable configuration (``"map"``). With no continuous latent site at all the
ELBO is the exact log evidence and the assignments are exact posterior draws.
"""
from __future__ import annotations

import numpy as np
import torch
from pyro import poutine
from pyro.infer import infer_discrete

from zoo.core.problem import Problem
from zoo.core.spec import Backend, Fit
from zoo.inference import svi
from zoo.inference.common import (
    complete_draws,
    discrete_draws,
    enumerated,
    sample_vectorised,
    seed_all,
    to_chains,
)


def applicable(problem: Problem) -> str | None:
    """``enum`` needs a discrete latent site to enumerate."""
    if not problem.sites:
        return "the model has no latent sites"
    if not problem.discrete_sites:
        return ("the model has no discrete latent sites to enumerate "
                f"(its latent sites {', '.join(problem.sites)} are continuous); use svi or nuts")
    return None


def _only_discrete(problem: Problem, *, seed: int, num_samples: int, num_chains: int,
                   temperature: int) -> Fit:
    """Every latent site discrete: the evidence and the posterior are exact sums."""
    model = poutine.enum(enumerated(problem), first_available_dim=-(problem.max_plate_nesting + 1))
    with torch.no_grad():
        tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    lps = [s["log_prob"] for s in tr.nodes.values() if s["type"] == "sample" and "log_prob" in s]
    joint = sum(lps)
    enum_dims = joint.dim() - problem.max_plate_nesting
    log_evidence = float(joint.logsumexp(dim=tuple(range(enum_dims))).sum()) if enum_dims else float(joint.sum())
    seed_all(seed)
    draws: dict[str, list[np.ndarray]] = {k: [] for k in problem.discrete_sites}
    sampler = infer_discrete(enumerated(problem), first_available_dim=-(problem.max_plate_nesting + 1),
                             temperature=temperature)
    for _ in range(num_chains * num_samples):
        t = poutine.trace(sampler).get_trace()
        for k, values in draws.items():
            values.append(t.nodes[k]["value"].numpy())
    return Fit(posterior=to_chains({k: np.stack(v) for k, v in draws.items()}, num_chains),
               diagnostics={"elbo": log_evidence, "log_evidence": log_evidence,
                            "note": "no continuous latents: exact enumeration"}, kind="independent")


def fit(problem: Problem, *, seed: int, guide: str, assignments: str, num_steps: int, lr: float,
        lr_decay: float, converge: bool, checkpoint: str, checkpoint_every: int, num_particles: int, num_samples: int, num_chains: int,
        num_elbo_particles: int, progress: bool | None, jit: bool) -> Fit:
    """Fit the guide with the discrete sites enumerated, then rebuild their draws."""
    temperature = 0 if assignments == "map" else 1
    if all(s.discrete for s in problem.sites.values()):
        return _only_discrete(problem, seed=seed, num_samples=num_samples, num_chains=num_chains,
                              temperature=temperature)
    trained = svi.fit_guide(problem, guide=guide, seed=seed, num_steps=num_steps, lr=lr,
                            lr_decay=lr_decay, num_particles=num_particles, progress=progress, converge=converge,
                            checkpoint=checkpoint, checkpoint_every=checkpoint_every, jit=jit)
    continuous = sample_vectorised(problem, trained.guide, num_chains * num_samples)
    draws = {**continuous, **discrete_draws(problem, continuous, temperature)} if temperature == 0 \
        else complete_draws(problem, continuous)
    diagnostics = svi.training_diagnostics(problem, trained, guide, num_steps, num_elbo_particles)
    return Fit(posterior=to_chains(draws, num_chains), diagnostics={**diagnostics, "assignments": assignments},
               guide=trained.guide, kind="point" if guide == "delta" else "independent")


BACKEND = Backend(
    name="enum",
    fit=fit,
    options={**svi.SVI_OPTIONS, "assignments": "sample"},
    choices={"guide": tuple(svi.GUIDES), "assignments": ("sample", "map")},
    summary="discrete latents summed out exactly (TraceEnum_ELBO); assignments by infer_discrete",
    applicable=applicable,
    refuses=svi.refuses,
    quick={"num_steps": 30, "num_samples": 20, "num_chains": 2, "num_elbo_particles": 100},
)

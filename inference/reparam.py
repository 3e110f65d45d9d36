"""Sampling chosen sites non-centred: the nuts and hmc option ``noncentered``.

A hierarchical model written centred (``theta ~ Normal(mu, tau)``) has a funnel between the
scale and the effects that one step size cannot cross. Pyro's own
`pyro.infer.reparam.LocScaleReparam` with ``centered=0`` samples ``theta_decentered ~
Normal(0, 1)`` instead and computes ``theta = mu + tau * theta_decentered``: the same
posterior over the model's sites, an easier geometry. The model as written stays the model;
the sampler runs on the reparameterised one (`noncentred`), and the draws come back under the
original site names (`restore`), so that packaging, log densities and scoring see the model
as written.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.infer.reparam import LocScaleReparam

from zoo.core.problem import Problem, prepare, traceable
from zoo.core.spec import Fit


def site_names(problem: Problem, names: str) -> list[str]:
    """The comma-separated site names of the option ``noncentered``, checked: each a
    continuous latent site of the model whose distribution has a ``loc`` and a ``scale``.

    Raises
    ------
    ZooError
        naming the model and the site that cannot be sampled non-centred.
    """
    sites = [s.strip() for s in names.split(",") if s.strip()]
    if not sites:
        return []
    with torch.no_grad():
        tr = poutine.trace(traceable(problem.model)).get_trace()
    for s in sites:
        if s not in problem.sites or problem.sites[s].discrete:
            raise problem.error(f"option noncentered: {s!r} is not a continuous latent site "
                                f"(latent sites: {', '.join(problem.sites)})")
        fn = tr.nodes[s]["fn"]
        while isinstance(fn, torch.distributions.Independent):  # as LocScaleReparam unwraps it
            fn = fn.base_dist
        if not {"loc", "scale"} <= set(fn.arg_constraints):
            raise problem.error(f"option noncentered: site {s!r} has a {type(fn).__name__} distribution, "
                                "without a loc and a scale to decentre")
    return sites


def noncentred(problem: Problem, sites: list[str]) -> Problem:
    """``problem`` with ``sites`` reparameterised by ``LocScaleReparam(centered=0)``: each
    becomes a latent ``<site>_decentered`` and a computed ``<site>``."""
    spec = problem.spec
    model = poutine.reparam(spec.model, config={s: LocScaleReparam(centered=0.0) for s in sites})
    spec = dataclasses.replace(spec, model=model,
                               latent_sites=tuple(k for k in spec.latent_sites if k not in sites))
    return prepare(spec, problem.np_data, problem.np_hyper)


def restore(problem: Problem, reparametrised: Problem, fit: Fit, sites: list[str]) -> Fit:
    """The fit of ``reparametrised`` as draws of ``problem``'s own latent sites: ``sites``
    computed from each draw by the reparameterised model (Pyro's `Predictive`, one draw at a
    time), the ``_decentered`` sites dropped, and ``lp`` left for the packaging to compute
    under the model as written."""
    chains, draws = next(iter(fit.posterior.values())).shape[:2]
    flat = {k: torch.as_tensor(v.reshape((chains * draws,) + v.shape[2:])) for k, v in fit.posterior.items()}
    with torch.no_grad():
        got = Predictive(reparametrised.model, posterior_samples=flat, return_sites=sites, parallel=False)()
    computed = {s: got[s].reshape((chains, draws) + problem.sites[s].shape).numpy() for s in sites}
    posterior = {k: np.asarray(computed[k] if k in computed else fit.posterior[k]) for k in problem.sites}
    note = (f"{', '.join(sites)} sampled non-centred (Pyro's LocScaleReparam(centered=0)); "
            "draws computed from the _decentered sites")
    chains_note = "; ".join(n for n in (fit.diagnostics.get("chains"), note) if n)
    return Fit(posterior=posterior, sample_stats={k: v for k, v in fit.sample_stats.items() if k != "lp"},
               diagnostics={**fit.diagnostics, "chains": chains_note}, guide=fit.guide, kind=fit.kind)

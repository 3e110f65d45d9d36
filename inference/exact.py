"""Back-end ``exact``: independent draws from the model's closed-form posterior."""
from __future__ import annotations

import numpy as np

from zoo.core.problem import Problem
from zoo.core.spec import Backend, Fit
from zoo.inference.common import to_chains


def fit(problem: Problem, *, seed: int, num_samples: int, num_chains: int, progress=None) -> Fit:
    """Draw ``num_chains x num_samples`` independent samples from the exact posterior.

    The log evidence log p(data) is reported in the diagnostics.
    """
    post = problem.exact()
    draws = post.sample(np.random.default_rng(seed), num_chains * num_samples)
    return Fit(
        posterior=to_chains({k: np.asarray(draws[k]) for k in problem.latent_sites}, num_chains),
        diagnostics={"log_evidence": post.log_evidence},
        kind="independent",
    )


def applicable(problem: Problem) -> str | None:
    """Why there is nothing to draw from: no closed form for these data, or a reference known
    only by summaries of its draws (`zoo.core.spec.StoredReference`)."""
    reason = problem.spec.exact_reason(problem.np_hyper, problem.np_data)
    if reason is None and problem.exact().sample is None:
        return (f"the reference posterior of {problem.name!r} is a stored {problem.exact().kind} summary (means, "
                "sds and their MCSEs), not draws; the other back-ends are scored against it")
    return reason


BACKEND = Backend(
    name="exact",
    fit=fit,
    options={"num_samples": 1000, "num_chains": 4, "progress": None},
    summary="independent draws from the closed-form posterior (the yardstick)",
    applicable=applicable,
)

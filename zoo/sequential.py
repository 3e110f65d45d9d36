"""Sequential Bayesian updating: the posterior after one batch is the prior for the next.

Seed 003 七 (the apples: Beta(50, 50) -> Beta(58, 52) -> Beta(67, 53)) and 004 eq 2.5. For a
conjugate model whose posterior stays in the prior's family, the exact posterior's parameters
are the next batch's hyperparameters (`ModelSpec.posterior_hyper`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zoo import registry
from zoo.core.errors import ZooError
from zoo.core.problem import prepare


def sequential_update(name: str, batches: Sequence[Mapping[str, Any]],
                      hyper: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Update a conjugate model batch by batch, each posterior the prior of the next batch.

    Parameters
    ----------
    name : a model whose spec has ``posterior_hyper`` (``beta_bernoulli``, ``poisson_gamma``,
        ``normal_known_mean``, ``normal_known_variance``, ``dirichlet_categorical``).
    batches : data dicts, one per batch, in the model's data keys.
    hyper : the first prior's hyperparameters (defaults from the model).

    Returns
    -------
    list of dict
        the full hyperparameters after each batch (one entry per batch), ready to pass as
        ``hyper=`` for the next batch. The last one is the one-shot posterior on all batches.

    Raises
    ------
    ZooError
        for a model whose posterior is not in its prior's family, or bad data in any batch
        (naming the batch).

    Examples
    --------
    >>> zoo.sequential_update("beta_bernoulli", [{"y": [1] * 8 + [0] * 2}, {"y": [1] * 9 + [0]}],
    ...                       hyper={"alpha": 50, "beta": 50})
    [{'alpha': 58.0, 'beta': 52.0}, {'alpha': 67.0, 'beta': 53.0}]
    """
    spec = registry.get_model(name)
    if spec.reference.posterior_hyper is None:
        why = ("its posterior has no closed form" if spec.reference.exact is None
               else "its exact posterior is not in the prior's family, so it cannot be the next prior")
        supported = [k for k, s in registry.MODELS.items() if s.reference.posterior_hyper is not None]
        raise ZooError(f"model {name!r}: sequential updating needs a conjugate model whose posterior "
                       f"is the next prior; {why}. Models that support it: {', '.join(supported)}")
    if isinstance(batches, Mapping) or not isinstance(batches, Sequence) or not batches:
        raise ZooError(f"model {name!r}: batches must be a non-empty list of data dicts, got {batches!r:.80}")
    current = dict(hyper or {})
    out = []
    for i, batch in enumerate(batches):
        try:
            problem = prepare(spec, batch, current)
        except ZooError as e:
            raise ZooError(f"batch {i}: {e}") from None
        reason = spec.exact_reason(problem.np_hyper, problem.np_data)
        if reason:
            raise ZooError(f"model {name!r}: batch {i}: no exact posterior: {reason}")
        new = {k: _plain(v) for k, v in spec.reference.posterior_hyper(problem.exact()).items()}
        current = {**{k: _plain(v) for k, v in problem.np_hyper.items()}, **new}
        out.append(dict(current))
    return out


def _plain(value: Any) -> Any:
    """Floats and lists of floats, so the results print and compare simply."""
    arr = np.asarray(value)
    if arr.dtype.kind in "fiu":
        return float(arr) if arr.ndim == 0 else arr.astype(float).tolist()
    return value

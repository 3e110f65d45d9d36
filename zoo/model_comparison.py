"""Comparing models (or hyperparameter settings of one model) on the same data by their
out-of-sample predictive accuracy: PSIS-LOO and stacking weights, through ``az.compare``.

>>> cmp = zoo.compare_models([("gaussian_mixture", {"K": k}) for k in (1, 2, 3)], backend="enum")
>>> cmp.table   # best first: elpd_loo, its standard error, the difference to the best, weight

Each model is run on the same data by the same back-end (or its own, given per entry); a
back-end whose draws are not a posterior over the model's global latents (a point estimate,
a model with only local latents) has no LOO, and the comparison refuses it with the reason.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoo import api, registry
from zoo.core import arviz_io
from zoo.core.errors import ZooError
from zoo.core.files import write_text
from zoo.core.problem import check_seed
from zoo.results import Result


@dataclass
class ModelComparison:
    """Models ranked by expected log predictive density (PSIS-LOO) on the same data.

    Attributes
    ----------
    table : one row per model, best first (``az.compare``): ``rank``, ``elpd_loo``, ``p_loo``,
        ``elpd_diff`` (to the best), ``weight`` (stacking weights: the mixture of the models'
        predictives that predicts best; they sum to one), ``se``, ``dse`` (standard error of
        the difference), ``warning`` (some Pareto k > 0.7), and the zoo's ``model``,
        ``backend``, ``hyper``, ``seconds``, ``loo_k_bad`` (share of observations with k > 0.7).
    results : label to `Result`.
    """

    table: pd.DataFrame
    results: dict[str, Result]
    data: dict[str, Any] = field(default_factory=dict)

    def plot(self, out: str | Path | None = None) -> Any:
        """``az.plot_compare``: each model's elpd_loo with its standard error, and its difference
        to the best with the standard error of the difference; a matplotlib figure (written as
        PNG when ``out`` is a ``.png`` path or a folder, there as ``compare.png``)."""
        fig = arviz_io.plot_compare(self.table, "model comparison by PSIS-LOO (best on top)")
        if out is not None:
            out = Path(out)
            arviz_io.save_figure(fig, out if out.suffix == ".png" else out / "compare.png")
        return fig

    def save(self, out: str | Path) -> list[Path]:
        """Write compare.csv, compare.md, one netCDF per model and compare.png into ``out``."""
        import matplotlib.pyplot as plt

        out = Path(out)
        files = [write_text(out / "compare.csv", self.table.to_csv()),
                 write_text(out / "compare.md", self.table.to_markdown(floatfmt=".4g"))]
        files += [r.save(out / f"{_file_name(label)}.nc") for label, r in self.results.items()]
        plt.close(self.plot(out / "compare.png"))
        return files + [out / "compare.png"]


def _file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _entry(item: Any, backend: str | None) -> tuple[str, dict[str, Any], str | None, str]:
    """(model, hyper, back-end, label) of one entry: a name, (name, hyper), or a dict with
    ``model`` and optional ``hyper``, ``backend`` and ``label``."""
    if isinstance(item, str):
        name, hyper, label, own = item, {}, None, None
    elif isinstance(item, Mapping):
        unknown = set(item) - {"model", "hyper", "backend", "label"}
        if "model" not in item or unknown:
            raise ZooError(f"a model entry must have 'model' and may have 'hyper', 'backend', 'label'; got {dict(item)!r}")
        name, hyper, label, own = item["model"], dict(item.get("hyper") or {}), item.get("label"), item.get("backend")
    elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Mapping):
        name, hyper, label, own = item[0], dict(item[1]), None, None
    else:
        raise ZooError(f"a model entry must be a name, (name, hyper) or a dict, got {item!r}")
    registry.get_model(name)
    if label is None:
        label = name + (f"({', '.join(f'{k}={v}' for k, v in hyper.items())})" if hyper else "")
    return name, hyper, own or backend, label


def compare_models(models: Sequence[Any], backend: str = "nuts", data: Mapping[str, Any] | None = None,
                   seed: int = 0, progress: bool | None = None, **options: Any) -> ModelComparison:
    """Rank models or hyperparameter settings on the same data by PSIS-LOO, with stacking weights.

    Parameters
    ----------
    models : entries, each a model name, ``(name, hyper)`` such as ``("gaussian_mixture", {"K": 2})``,
        or a dict with ``model`` and optional ``hyper``, ``backend`` and ``label``. Two or more.
    backend : the back-end every entry runs under unless it names its own; it must give
        posterior draws (not ``em`` or a MAP point estimate).
    data : the data every model is fitted to; None takes the first entry's default data
        (simulated with its hyperparameters) for all of them.
    seed : the same seed for every run.
    **options : back-end options (``num_samples=500``), given to every run.

    Returns
    -------
    ModelComparison

    Raises
    ------
    ZooError
        for a bad entry, two entries with one label, data that do not fit a model, models
        that observe different data, or a result without LOO (naming the entry and why),
        before any run where it can be known before.
    """
    seed = check_seed(seed)
    if isinstance(models, (str, Mapping)) or not isinstance(models, Sequence) or len(models) < 2:
        raise ZooError(f"compare_models needs a list of two or more models, got {models!r}")
    entries = [_entry(m, backend) for m in models]
    labels = [e[3] for e in entries]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ZooError(f"compare_models: the entries {dupes} appear more than once; give them distinct "
                       "hyperparameters or labels")
    name0, hyper0, _, _ = entries[0]
    if data is None:
        spec = registry.get_model(name0)
        data = dict(spec.example) if spec.example is not None else api.simulate(name0, seed=0, hyper=hyper0)[0]
    for name, hyper, _, _ in entries:  # bad data or hyperparameters fail before the first run
        api.prepare_problem(registry.get_model(name), data, hyper or None)
    results: dict[str, Result] = {}
    observed: dict[str, np.ndarray] | None = None
    for name, hyper, b, label in entries:
        res = api.run(name, b, data=data, seed=seed, hyper=hyper or None, progress=progress, **options)
        if "elpd_loo" not in res.diagnostics:
            raise ZooError(f"compare_models: {label} under back-end {b!r} has no LOO: {res.diagnostics.get('loo_note')}")
        obs = {k: res.idata.observed_data[k].values for k in res.idata.observed_data.data_vars}
        if observed is None:
            observed = obs
        elif obs.keys() != observed.keys() or any(not np.array_equal(obs[k], observed[k]) for k in obs):
            raise ZooError(f"compare_models: {label} observes {sorted(obs)}, not the same data as {labels[0]} "
                           f"({sorted(observed)}); LOO compares models of the same observations")
        results[label] = res
    table = arviz_io.compare({k: r.idata for k, r in results.items()})
    extra = pd.DataFrame({
        "model": [results[k].model for k in table.index],
        "backend": [results[k].backend for k in table.index],
        "hyper": [json.dumps(e[1]) for k in table.index for e in entries if e[3] == k],
        "seconds": [results[k].seconds for k in table.index],
        "loo_k_bad": [results[k].diagnostics["loo_k_bad"] for k in table.index],
    }, index=table.index)
    return ModelComparison(pd.concat([table, extra], axis=1), results,
                           {k: np.asarray(v) for k, v in data.items()})

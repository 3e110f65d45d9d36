"""Grids: every model x back-end x seed as one long table, built from independent tasks
(`zoo.tasks`), in-process or on Ray, resumable from per-task files.

>>> import zoo
>>> g = zoo.grid(["beta_bernoulli", "poisson_gamma"], ["exact", "svi"], seeds=[0, 1],
...              options={"svi": {"num_steps": 200}}, out="out/grid")
>>> g.table                      # one row per (model, back-end, seed)
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoo import api, registry, scoring
from zoo.core.errors import ZooError
from zoo.core.files import write_text
from zoo.core.problem import check_names, check_seed
from zoo.tasks import Task, execute

# Columns that measure wall time: they differ between two runs of the same task.
TIMING_COLUMNS = ("seconds", "ess_per_second")


@dataclass
class Grid:
    """The results of a grid: ``table`` has one row per (model, back-end, seed)."""

    table: pd.DataFrame

    def save(self, out: str | Path) -> list[Path]:
        """Write grid.csv and grid.md into ``out`` (atomically)."""
        out = Path(out)
        return [write_text(out / "grid.csv", self.table.to_csv(index=False)),
                write_text(out / "grid.md", self.table.to_markdown(index=False, floatfmt=".4g"))]


def grid(models: Iterable[str], backends: Iterable[str], seeds: Iterable[int] | int = 1, *,
         options: Mapping[str, Mapping[str, Any]] | None = None, hyper: Mapping[str, Any] | None = None,
         out: str | Path | None = None, executor: str = "local", address: str | None = None,
         progress: bool | None = None, **common: Any) -> Grid:
    """Run every back-end on every model for every seed and gather one long table.

    Each (model, back-end, seed) is one task: data from ``zoo.simulate(model, seed=seed)``,
    then ``zoo.compare(model, [backend], data, seed=seed, truth=...)``; its table row, with
    ``model`` and ``seed`` in front, is one row of the grid.

    Parameters
    ----------
    models : model names.
    backends : back-end labels (``"svi:full_rank"`` picks a guide); one that does not apply
        to a model gives a row with the reason in ``note``.
    seeds : the seeds, or a number n for seeds 0..n-1.
    options : per back-end label, its options: ``{"svi": {"num_steps": 500}}``.
    hyper : hyperparameters given to every model (None: each model's defaults).
    out : folder for one JSON file per task; a re-run skips tasks already there (resume).
    executor : ``"local"`` or ``"ray"`` (see `execute`); both give the same table except for
        the timing columns `TIMING_COLUMNS`.
    address : the Ray cluster to join (None: start a local one).
    **common : options given to every back-end that accepts them (``num_samples=500``).

    Returns
    -------
    Grid whose ``table`` has columns model, seed, then the comparison-table columns.
    """
    models, backends = check_names(models, "grid: models"), check_names(backends, "grid: backends")
    seeds = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if not models or not backends or not seeds:
        raise ZooError("grid needs at least one model, one back-end and one seed")
    seeds = [check_seed(s) for s in seeds]
    tasks, plans = [], []
    for name in models:  # every name, label and option is checked before the first task runs
        plans.append(api.plan(registry.get_model(name), backends, options, common, f"model {name!r}: "))
        for label, (_, opts) in plans[-1].items():
            tasks += [Task("grid", name, label, s, opts, dict(hyper) if hyper else None) for s in seeds]
    api.check_common(common, plans, backends, "grid: ")
    rows = execute(tasks, grid_row, out=out, executor=executor, address=address, progress=progress, desc="grid")
    table = pd.DataFrame([{"model": t.model, "seed": t.seed, **r} for t, r in zip(tasks, rows)])
    first = ["model", "backend", "seed"] + [c for c in scoring.COLUMNS if c not in ("backend", "note")]
    cols = [c for c in first if c in table] + [c for c in table if c not in first and c != "note"]
    return Grid(table[cols + (["note"] if "note" in table else [])])


def grid_row(task: Task) -> dict[str, Any]:
    """One grid task: simulate with the task's seed, compare the one back-end, its table row."""
    data, truth = api.simulate(task.model, seed=task.seed, hyper=task.hyper)
    cmp = api.compare(task.model, [task.backend], data=data, seed=task.seed, hyper=task.hyper,
                      options={task.backend: dict(task.options)} if task.options else None,
                      progress=False, truth=truth)
    return {k: v for k, v in cmp.table.iloc[0].to_dict().items() if not _is_missing(v)}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))

"""Grids of runs, and the task machinery that grids and simulation-based calibration share.

A *task* is one back-end run keyed by (kind, model, back-end, options, hyperparameters, seed).
Its seed fixes everything (the simulated data and the inference), so a task gives the same
numbers wherever it runs: in this process (``executor="local"``) or on a Ray worker
(``executor="ray"``). With an output folder every finished task is written atomically to
``OUT/<model>/<backend>/<seed>.json``; a re-run reads the files that exist instead of
running them again, so an interrupted grid resumes where it stopped.

>>> import zoo
>>> g = zoo.grid(["beta_bernoulli", "poisson_gamma"], ["exact", "svi"], seeds=[0, 1],
...              options={"svi": {"num_steps": 200}}, out="out/grid")
>>> g.table                      # one row per (model, back-end, seed)
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from zoo.errors import ZooError
from zoo.files import jsonable, write_text

EXECUTORS = ("local", "ray")
# Columns that measure wall time: they differ between two runs of the same task.
TIMING_COLUMNS = ("seconds", "ess_per_second")
RAY_HINT = 'pip install "pyro-model-zoo[ray]"'


@dataclass(frozen=True)
class Task:
    """One back-end run on data simulated with ``seed``.

    Parameters
    ----------
    kind : ``"grid"`` (a comparison-table row) or ``"sbc"`` (ranks of the truth).
    model, backend : model name and back-end label (``svi:full_rank`` picks a guide).
    seed : seeds the simulation and the inference.
    options : back-end options.
    hyper : hyperparameters, or None for the model's defaults.
    num_draws : SBC only: the number of thinned draws the truth is ranked among.
    """

    kind: str
    model: str
    backend: str
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    hyper: Mapping[str, Any] | None = None
    num_draws: int = 0

    def key(self) -> dict[str, Any]:
        """The task as JSON-compatible data (what a result file must match to be reused)."""
        return json.loads(json.dumps(asdict(self), default=_jsonable, sort_keys=True))

    def path(self, out: str | Path) -> Path:
        """Where the task's result lives under ``out``."""
        return Path(out) / self.model / re.sub(r"[^A-Za-z0-9_.-]", "_", self.backend) / f"{self.seed}.json"


def run_task(task: Task) -> dict[str, Any]:
    """Run one task in this process on one torch thread and return its JSON-ready result."""
    import torch

    torch.set_num_threads(1)
    work = {"grid": _grid_row, "sbc": _sbc_ranks}[task.kind]
    return json.loads(json.dumps(work(task), default=_jsonable))


def execute(tasks: Sequence[Task], *, out: str | Path | None = None, executor: str = "local",
            address: str | None = None, progress: bool | None = None, desc: str = "tasks") -> list[dict]:
    """Run every task and return their results in the order of ``tasks``.

    Parameters
    ----------
    out : folder for one JSON file per task; tasks whose file exists are read, not re-run.
    executor : ``"local"`` (one after another in this process) or ``"ray"`` (one Ray task
        each, one CPU each).
    address : join this Ray cluster (``"auto"`` or ``"ray://host:10001"``); None starts a
        local Ray with every core of the machine unless one is already running.
    progress : show a progress bar (None: only on a terminal).
    """
    if executor not in EXECUTORS:
        raise ZooError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    results: list[dict | None] = [None] * len(tasks)
    todo = []
    for i, task in enumerate(tasks):
        done = _read_done(task, out) if out is not None else None
        if done is None:
            todo.append(i)
        else:
            results[i] = done
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=desc,
               disable=None if progress is None else not progress, leave=False)
    try:
        if executor == "local" or not todo:
            for i in todo:
                results[i] = _finish(tasks[i], run_task(tasks[i]), out, bar)
        else:
            _run_on_ray(tasks, todo, results, out, address, bar)
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def _finish(task: Task, result: dict, out: str | Path | None, bar: tqdm) -> dict:
    """Write a finished task's file (atomically) and tick the progress bar."""
    if out is not None:
        write_text(task.path(out), json.dumps({"task": task.key(), "result": result}, indent=1))
    bar.update(1)
    return result


def _read_done(task: Task, out: str | Path) -> dict | None:
    path = task.path(out)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:  # files are written atomically, so this is not ours
        raise ZooError(f"{str(path)!r} is not a result file of the zoo ({e}); remove it") from None
    if saved.get("task") != task.key():
        raise ZooError(f"{str(path)!r} holds the result of another task ({saved.get('task')}), not of "
                       f"{task.key()}; use another output folder or remove it")
    return saved["result"]


def ray_module() -> Any:
    """Ray, imported on first use (an optional extra)."""
    try:
        import ray
    except ImportError:
        raise ZooError(f'executor="ray" needs Ray, which is not installed: {RAY_HINT}') from None
    return ray


def start_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Join the Ray cluster at ``address``, or start a local one with ``num_cpus`` CPUs (default:
    every core), unless Ray is already initialised in this process. Returns the ray module."""
    ray = ray_module()
    if not ray.is_initialized():
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return ray


def _run_on_ray(tasks: Sequence[Task], todo: list[int], results: list, out, address, bar) -> None:
    from zoo import registry

    for i in todo:
        if not registry.get_model(tasks[i].model).model.__module__.startswith("models."):
            raise ZooError(f"model {tasks[i].model!r} was registered in this process only; Ray workers "
                           "cannot see it: use executor='local'")
    ray = start_ray(address)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
    pending = {remote.remote(tasks[i]): i for i in todo}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = e.as_instanceof_cause()
                    raise cause if isinstance(cause, ZooError) else ZooError(
                        f"task {tasks[i].key()} failed on Ray: {e}") from None
                results[i] = _finish(tasks[i], result, out, bar)
    finally:
        for ref in pending:  # an interrupted or failed grid leaves nothing running
            ray.cancel(ref)


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
    from zoo import api, registry, scoring

    models, backends = list(models), list(backends)
    seeds = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if not models or not backends or not seeds:
        raise ZooError("grid needs at least one model, one back-end and one seed")
    options = {k: dict(v) for k, v in (options or {}).items()}
    for label in options:
        if label not in backends:
            raise ZooError(f"grid: options given for {label!r}, which is not among the back-ends {backends}")
    for seed in seeds:
        api._check_seed(seed)
    tasks = []
    accepted: set[str] = set()
    for name in models:  # every name, label and option is checked before the first task runs
        spec = registry.get_model(name)
        for label in backends:
            b = registry.get_backend(spec, api._parse_label(label)[0])
            accepted |= set(b.options)
            bad = [k for k in options.get(label, {}) if k not in b.options]
            if bad:
                raise ZooError(f"model {name!r}: back-end {b.name!r} has no option {bad[0]!r}; its options: "
                               f"{', '.join(b.options)}")
            opts = {**{k: v for k, v in common.items() if k in b.options}, **options.get(label, {})}
            tasks += [Task("grid", name, label, int(s), opts, dict(hyper) if hyper else None) for s in seeds]
    for k in common:
        if k not in accepted:
            raise ZooError(f"grid: option {k!r} is accepted by none of the back-ends {backends}")
    rows = execute(tasks, out=out, executor=executor, address=address, progress=progress, desc="grid")
    table = pd.DataFrame([{"model": t.model, "seed": t.seed, **r} for t, r in zip(tasks, rows)])
    first = ["model", "backend", "seed"] + [c for c in scoring.COLUMNS if c not in ("backend", "note")]
    cols = [c for c in first if c in table] + [c for c in table if c not in first and c != "note"]
    return Grid(table[cols + (["note"] if "note" in table else [])])


def _grid_row(task: Task) -> dict[str, Any]:
    from zoo import api

    data, truth = api.simulate(task.model, seed=task.seed, hyper=task.hyper)
    cmp = api.compare(task.model, [task.backend], data=data, seed=task.seed, hyper=task.hyper,
                      options={task.backend: dict(task.options)} if task.options else None,
                      progress=False, truth=truth)
    return {k: v for k, v in cmp.table.iloc[0].to_dict().items() if not _is_missing(v)}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _sbc_ranks(task: Task) -> dict[str, Any]:
    from zoo.calibration import simulation_ranks

    return simulation_ranks(task)


def _jsonable(value: Any) -> Any:
    """As `zoo.files.jsonable`, and read-only mappings (a frozen task's options) as dicts."""
    return dict(value) if isinstance(value, Mapping) else jsonable(value)

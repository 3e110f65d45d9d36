"""Tasks: independent back-end runs keyed by what they compute, run here or on Ray, each
written to its own file so that an interrupted batch resumes. Grids (`zoo.grids`) and
simulation-based calibration (`zoo.calibration`) are both batches of tasks; each passes its
own work function.

A *task* is one back-end run keyed by (kind, model, back-end, options, hyperparameters, seed).
Its seed fixes everything (the simulated data and the inference), so a task gives the same
numbers wherever it runs: in this process (``executor="local"``) or on a Ray worker
(``executor="ray"``). With an output folder every finished task is written atomically to
``OUT/<model>/<backend>/<seed>.json``; a re-run reads the files that exist instead of
running them again.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from zoo import registry
from zoo.core.errors import ZooError
from zoo.core.files import jsonable, write_text

EXECUTORS = ("local", "ray")
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


def run_task(task: Task, work: Callable[[Task], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work(task)`` in this process on one torch thread; its JSON-ready result."""
    torch.set_num_threads(1)
    return json.loads(json.dumps(work(task), default=_jsonable))


def execute(tasks: Sequence[Task], work: Callable[[Task], dict[str, Any]], *, out: str | Path | None = None, executor: str = "local",
            address: str | None = None, progress: bool | None = None, desc: str = "tasks") -> list[dict]:
    """Run ``work`` on every task and return the results in the order of ``tasks``.

    Parameters
    ----------
    work : a module-level function (Ray pickles it by reference) from a task to a JSON-ready dict.
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
                results[i] = _finish(tasks[i], run_task(tasks[i], work), out, bar)
        else:
            _run_on_ray(tasks, work, todo, results, out, address, bar)
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


def _run_on_ray(tasks: Sequence[Task], work: Callable[[Task], dict[str, Any]], todo: list[int], results: list,
                out, address, bar) -> None:
    for i in todo:
        if not registry.ships_with_zoo(tasks[i].model):
            raise ZooError(f"model {tasks[i].model!r} was registered in this process only; Ray workers "
                           "cannot see it: use executor='local'")
    ray = start_ray(address)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
    pending = {remote.remote(tasks[i], work): i for i in todo}
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


def _jsonable(value: Any) -> Any:
    """As `zoo.core.files.jsonable`, and read-only mappings (a frozen task's options) as dicts."""
    return dict(value) if isinstance(value, Mapping) else jsonable(value)

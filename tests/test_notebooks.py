"""Every notebook is a jupytext pair (py:percent + ipynb) whose cells cannot drift apart, and
runs at the settings a reader gets.

The notebooks themselves are executed by ``pytest --nbmake notebooks`` (in CI with
``--overwrite``, so the docs show that run's outputs); this test only checks the pairing and
the settings, so it is fast.
"""
from __future__ import annotations

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SCRIPTS = sorted(NOTEBOOKS.glob("*.py"))


def _cells(path: Path) -> list[tuple[str, str]]:
    nb = jupytext.read(path)
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def test_there_are_notebooks():
    assert SCRIPTS, f"no notebooks/*.py found in {NOTEBOOKS}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_notebook_pair_in_sync(script: Path):
    paired = script.with_suffix(".ipynb")
    assert paired.exists(), (f"{script.name} has no paired {paired.name}; run "
                             f"`jupytext --sync notebooks/{script.name}`")
    header = jupytext.read(script).metadata.get("jupytext", {})
    assert "ipynb" in header.get("formats", "") and "py:percent" in header.get("formats", ""), (
        f"{script.name}: its jupytext header must declare formats: ipynb,py:percent")
    py_cells, nb_cells = _cells(script), _cells(paired)
    assert len(py_cells) == len(nb_cells), (
        f"{script.name} has {len(py_cells)} cells, {paired.name} has {len(nb_cells)}; "
        f"run `jupytext --sync notebooks/{script.name}`")
    for i, (a, b) in enumerate(zip(py_cells, nb_cells)):
        assert a == b, (f"cell {i} differs between {script.name} and {paired.name}; "
                        f"run `jupytext --sync notebooks/{script.name}`")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_notebook_runs_at_reader_settings_within_a_budget(script: Path):
    text = script.read_text()
    # no smoke mode: CI runs what a reader runs (a one-chain smoke mode once hid r_hat 1.84)
    assert "ZOO_SMOKE" not in text and "SMOKE" not in text, f"{script.name} has a smoke mode"
    budget = jupytext.read(script).metadata.get("execution", {}).get("timeout")
    assert isinstance(budget, int) and 0 < budget <= 600, (
        f"{script.name}: declare a per-cell time budget in its header (jupyter: execution: timeout: SECONDS)")

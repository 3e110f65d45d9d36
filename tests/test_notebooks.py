"""Every notebook is a jupytext pair (py:percent + ipynb) whose cells cannot drift apart.

The notebooks themselves are executed by ``pytest --nbmake notebooks/*.ipynb`` (with
``ZOO_SMOKE=1`` for the quick settings); this test only checks the pairing, so it is fast.
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

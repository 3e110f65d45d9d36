"""The layering contract, read from the source: a core that models and back-ends import, a
facade on top that nothing below imports, no import loop, no private names across modules.

    zoo.core        imports nothing else of the zoo
    zoo.inference   imports zoo.core (and itself)
    zoo.models      imports zoo.core and zoo.inference (and itself)
    the facade      (zoo.api, zoo.registry, zoo.results, ...) imports anything; the posteriordb
                    suite (zoo.posteriordb) registers through it like a user
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"zoo": "zoo", "zoo/core": "zoo.core", "models": "zoo.models", "inference": "zoo.inference",
            "posteriordb": "zoo.posteriordb"}
LAYERS = {"zoo.core": 0, "zoo.inference": 1, "zoo.models": 2, "zoo": 3}
MAY_IMPORT = {"zoo.core": {"zoo.core"}, "zoo.inference": {"zoo.core", "zoo.inference"},
              "zoo.models": {"zoo.core", "zoo.inference", "zoo.models"}}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    for package in ("zoo.core", "zoo.inference", "zoo.models"):
        if module == package or module.startswith(package + "."):
            return package
    return "zoo"


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported zoo module, line, at module level) for every import of the zoo in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                     if f"{node.module}.{a.name}" in MODULES]
        else:
            continue
        for name in names:
            if name == "zoo" or name.startswith("zoo."):
                found.append((name, node.lineno, id(node) in top))
    return found


@pytest.mark.parametrize("module", [m for m in MODULES if _layer(m) != "zoo"])
def test_lower_layers_never_import_upwards(module):
    layer = _layer(module)
    bad = [(name, line) for name, line, _ in _imports(MODULES[module]) if _layer(name) not in MAY_IMPORT[layer]
           or name == "zoo"]
    assert not bad, f"{module} ({layer}) imports {bad}; it may import only {sorted(MAY_IMPORT[layer])}"


@pytest.mark.parametrize("module", list(MODULES))
def test_no_function_level_import_of_the_zoo(module):
    inner = [(name, line) for name, line, top in _imports(MODULES[module]) if not top]
    assert not inner, f"{module} imports {inner} inside a function: import at the top (a loop shows in the test below)"


def test_no_import_loop():
    graph = {m: {n for n, _, _ in _imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}
    graph["zoo"] = set()  # the package's own __init__ re-exports the facade: not a dependency of it
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import loop: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", list(MODULES))
def test_no_private_names_across_modules(module):
    tree = ast.parse(MODULES[module].read_text())
    aliases = {}
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("zoo"):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    bad.append(f"from {node.module} import {a.name}")
                if f"{node.module}.{a.name}" in MODULES:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("zoo"):
                    aliases[a.asname or a.name] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            bad.append(f"{aliases[node.value.id]}.{node.attr} (line {node.lineno})")
    assert not bad, f"{module} uses private names of other modules: {bad}"


def test_every_source_file_is_in_a_layer():
    assert set(LAYERS) == {_layer(m) for m in MODULES}


def test_a_users_own_models_and_inference_modules_do_not_shadow_the_zoo(tmp_path):
    """The zoo installs no generic top-level name: a user's models.py and inference.py in the
    working directory are theirs, and the zoo still runs (issue: import clash)."""
    for name in ("models", "inference"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    code = ("import zoo; r = zoo.run('beta_bernoulli', 'exact', num_samples=10); "
            "print(r.backend, zoo.models.__name__, zoo.inference.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["exact", "zoo.models", "zoo.inference"]

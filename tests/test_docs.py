"""The docs' generators: gallery pages from the registry, tables from files, docstrings as text.

The Sphinx build itself runs in CI (``python docs/build.py``, warnings as errors); these tests
need no Sphinx and check what the generated pages say.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

import zoo

DOCS = Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS))
import pages  # noqa: E402


def test_every_registered_model_gets_a_gallery_page(tmp_path):
    pages.gallery_pages(tmp_path)
    index = (tmp_path / "gallery" / "index.md").read_text()
    for name in zoo.list_models():
        page = (tmp_path / "gallery" / f"{name}.md").read_text()
        spec = zoo.get_model(name)
        assert f"\n# `{name}`\n" in page and spec.seed_section in page
        assert f"({name}.md)" in index
        for key in spec.data:
            assert f"`{key}`" in page
        # no comparison files under tmp_path: the page says how to make them, and shows no number
        assert f"python docs/gallery.py --models {name}" in page


def test_gallery_page_renders_the_comparison_files(tmp_path):
    files = tmp_path / pages.GALLERY_FILES / "beta_bernoulli"
    files.mkdir(parents=True)
    table = pd.DataFrame([{"backend": "exact", "seconds": 0.01, "draws": 4000.0, "max_abs_z": 0.01, "correct": True,
                           "note": ""},
                          {"backend": "svi", "seconds": 2.5, "draws": 4000.0, "max_abs_z": 0.3, "correct": False,
                           "note": "a note"},
                          {"backend": "enum", "note": "not applicable: no discrete sites"}])
    table.to_csv(files / "table.csv", index=False)
    (files / "run.json").write_text('{"settings": {"num_samples": 300}, "wall_seconds": 3.5, "figures": ["forest.png"],'
                                    ' "versions": {"pyro": "p", "torch": "t", "arviz": "a"}}')
    page = pages.gallery_page("beta_bernoulli", tmp_path)
    assert "| exact | 0.01 | 4000 |" in page  # integers as integers
    assert "| enum |" not in page and "- `enum`: not applicable: no discrete sites" in page
    assert "- `svi`: a note" in page and "`num_samples=300`" in page
    assert "forest.png" in page and "nan" not in page.lower()


def test_benchmark_page_renders_what_is_present_and_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(pages, "PERF_JSON", tmp_path / "perf.json")
    monkeypatch.setattr(pages, "SBC_REPORT", tmp_path / "sbc_report.jsonl")
    monkeypatch.setattr(pages, "POSTERIORDB_JSON", tmp_path / "posteriordb.json")
    page = pages.benchmark_page()
    assert page.count("Missing:") == 3
    (tmp_path / "posteriordb.json").write_text(json.dumps({"command": "c", "date": "d", "seed": 0, "versions": {}, "models": [
        {"name": "m", "kind": "k", "defaults": {"nuts": {"dense_mass": True}}, "left_out": {"hmc": "too slow: 300 s"},
         "rows": [{"backend": "nuts", "max_abs_z": 0.1, "sd_ratio_min": 0.95, "sd_ratio_max": 1.05, "seconds": 12.0,
                   "divergences": 0, "tree_depth_max": 3, "steps": None, "correct": True, "recommended": True, "note": ""},
                  {"backend": "svi", "max_abs_z": 0.4, "sd_ratio_min": 0.5, "sd_ratio_max": 0.9, "seconds": 3.0,
                   "divergences": None, "tree_depth_max": None, "steps": 5000, "converged": False, "correct": False,
                   "recommended": False, "note": "not converged"},
                  {"backend": "hmc", "max_abs_z": None, "note": "left out: too slow: 300 s"}]}]}))
    page = pages.benchmark_page()
    assert page.count("Missing:") == 2
    assert ("| m | k | nuts: dense_mass=True | yes (\\|z\\| 0.10, sd 0.95-1.05, 12 s, 0 div, depth 3) | left out | "
            "no (\\|z\\| 0.40, sd 0.50-0.90, 3 s, 5000 steps (cap)) | n/a | n/a | nuts |") in page, page
    assert "- `m` hmc: too slow: 300 s" in page
    (tmp_path / "posteriordb.json").unlink()
    page = pages.benchmark_page()
    assert page.count("Missing:") == 3
    (tmp_path / "sbc_report.jsonl").write_text(
        'some text\n{"model": "m", "backend": "nuts", "verdict": "passed", "min_p": 0.5, "simulations": 40}\n'
        '{"model": "m", "backend": "svi", "verdict": "FAILED", "min_p": 1e-05, "simulations": 40}\n')
    page = pages.benchmark_page()
    assert page.count("Missing:") == 2 and "| m | pass | FAIL |" in page
    (tmp_path / "perf.json").write_text('{"settings": {"num_samples": 500}, "seed": 0, "machine": "x", '
                                        '"rows": [{"model": "m", "backend": "nuts", "ess_per_second": 12.5}], "peer": []}')
    page = pages.benchmark_page()
    assert page.count("Missing:") == 1 and "| m | nuts | 12.5 |" in page


def test_docstrings_are_plain_text_outside_literal_blocks():
    lines = ["|z| = |mean - mean_exact| / sd", "shape ``(S, *shape)`` or (S, *shape)", "**options : passed on",
             "Its log |J| is::", "", "    log|d v| = sum_i log L_ii", "back to |text|"]
    assert pages.plain_docstring(lines) == [
        r"\|z\| = \|mean - mean_exact\| / sd", r"shape ``(S, *shape)`` or (S, \*shape)", "**options : passed on",
        r"Its log \|J\| is::", "", "    log|d v| = sum_i log L_ii", r"back to \|text\|"]


def test_a_docstring_story_becomes_a_fenced_block():
    text = pages.story("Draws::\n\n    x ~ Normal(0, 1)\n    y = x\n\nAfter.")
    assert text == "Draws:\n\n```text\nx ~ Normal(0, 1)\ny = x\n```\n\nAfter."
    assert pages.story("Generative story::\n\n    x ~ N\n").startswith("\n```text\nx ~ N")


def test_numpy_sections_written_as_name_colon_description_become_items():
    lines = ["Run it.", "", "Parameters", "----------", "name : model name (`list_models`).",
             "seed : the same seed", "    gives the same numbers.", "**options : back-end options."]
    assert pages.plain_docstring(lines) == [
        "Run it.", "", "Parameters", "----------", "name", "    model name (`list_models`).",
        "seed", "    the same seed", "    gives the same numbers.", "**options", "    back-end options."]

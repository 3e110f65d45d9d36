"""Sphinx configuration of the zoo's documentation (MyST-NB, PyData theme, numpydoc).

Generated pages are written when the build starts (``builder-inited``), so every build picks
up the registry, the gallery's files and the benchmark JSON files as they are now:

- ``gallery/*.md``: one page per registered model (`pages.gallery_pages`);
- ``benchmarks.md``: the measured tables (`pages.benchmark_page`);
- ``notebooks/*.ipynb``: copies of ``../notebooks/*.ipynb`` with the outputs they were last
  executed with (pytest's ``--nbmake --overwrite`` in CI); the build does not execute them.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pages  # noqa: E402

project = "Pyro model zoo"
author = "the zoo's authors"
copyright = "2026, the zoo's authors"

extensions = [
    "myst_nb",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# The notebooks are executed once, by pytest (--nbmake --overwrite), at reader settings; the
# docs render the outputs stored in them.
nb_execution_mode = "off"
nb_merge_streams = True
nb_output_stderr = "remove"  # warnings a run printed; the notebooks filter the expected ones

autodoc_member_order = "bysource"
autodoc_typehints = "signature"  # the docstrings describe, the signatures type
autodoc_default_options = {"members": True, "undoc-members": False}
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = "Pyro model zoo"
html_static_path = ["_static"]
html_css_files = ["zoo.css"]
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"index": [], "getting-started": [], "benchmarks": []}
html_show_sourcelink = False


def setup(app):  # noqa: ANN001, ANN201
    app.connect("builder-inited", lambda app: pages.write_all(HERE))
    # before numpydoc (priority 500) parses the sections
    app.connect("autodoc-process-docstring", lambda app, what, name, obj, options, lines:
                lines.__setitem__(slice(None), pages.plain_docstring(lines)), priority=100)

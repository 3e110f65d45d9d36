"""The generated pages of the docs: the model gallery, the measured tables and the notebooks.

Called by ``conf.py`` when a build starts. Everything here is read from the registry and from
files that scripts wrote (``docs/gallery.py``, ``benchmarks/perf.py``,
``benchmarks/sbc_table.py --report``); no number is typed by hand. A missing file gives a
page that says which command writes it.
"""
from __future__ import annotations

import json
import os
import re
import sys
import warnings
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from benchmarks.posteriordb_suite import summary as posteriordb_summary  # noqa: E402
from benchmarks.sbc_table import verdict_matrix  # noqa: E402
from zoo import api, registry, scoring  # noqa: E402
from zoo.cli import SHORT_COLUMNS, format_value, grouped_notes  # noqa: E402
from zoo.core.files import jsonable  # noqa: E402

GALLERY_FILES = "gallery/files"  # relative to docs/: what docs/gallery.py writes (committed)
PERF_JSON = ROOT / "benchmarks" / "results" / "perf.json"
PEER_FIRST = ["model", "zoo", "chains", "numpyro_chain_method", "ess_per_s_ratio_zoo_over_numpyro_cold",
              "ess_per_s_ratio_zoo_over_numpyro_warm", "zoo_ess_bulk_per_s", "numpyro_ess_bulk_per_s_cold",
              "numpyro_ess_bulk_per_s_warm"]
"""The peer table's columns a reader compares (the ratios first), before the seconds and ESS
they come from."""
SBC_REPORT = ROOT / "benchmarks" / "results" / "sbc_report.jsonl"
POSTERIORDB_JSON = ROOT / "benchmarks" / "results" / "posteriordb.json"


NUMPYDOC_SECTIONS = {"Parameters", "Returns", "Yields", "Raises", "Attributes", "Other Parameters", "Warns"}


def plain_docstring(lines: list[str]) -> list[str]:
    """The zoo's docstrings are plain text with numpy-style sections; make them read so in RST.

    Outside literal blocks (after ``::``) and ````code```` spans, ``|x|`` is an absolute
    value, not a substitution, and ``(S, *shape)`` a star, not the start of emphasis. In a
    section such as Parameters, the zoo writes ``name : what it is`` (a description; the
    types are in the signature), which numpydoc would show as a type: it becomes ``name``
    with the description indented below it.
    """
    out, literal_indent, section_indent = [], None, None
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None and line.strip() and indent <= literal_indent:
            literal_indent = None
        if line.strip() in NUMPYDOC_SECTIONS and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
            section_indent = indent
        elif section_indent is not None and line.strip() and indent < section_indent:
            section_indent = None
        if literal_indent is None and line.strip():
            parts = re.split(r"(``.*?``|`[^`]*`)", line)
            parts[::2] = [re.sub(r"(?<=[\s(\[])\*(?=\w)", r"\\*", re.sub(r"\|", r"\\|", p)) for p in parts[::2]]
            line = "".join(parts)
            if line.rstrip().endswith("::"):
                literal_indent = indent
            item = re.match(r"^(\s*)([\w*\\, ]+?) : (.+)$", line)
            if section_indent is not None and indent == section_indent and item:
                out += [item.group(1) + item.group(2), item.group(1) + "    " + item.group(3)]
                continue
        out.append(line)
    return out


def write_all(docs: Path) -> None:
    """Write every generated page under ``docs`` (called at the start of each build)."""
    copy_notebooks(docs)
    gallery_pages(docs)
    write_if_changed(docs / "benchmarks.md", benchmark_page())


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (Sphinx then keeps its cached page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def copy_notebooks(docs: Path) -> None:
    """The executed notebooks, as pytest left them, into ``docs/notebooks``; the pages drop
    the right-hand sidebar so that code, tables and figures get the width."""
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        content = json.loads(nb.read_text())
        content["metadata"]["html_theme.sidebar_secondary.remove"] = True
        write_if_changed(docs / "notebooks" / nb.name, json.dumps(content, indent=1, ensure_ascii=False) + "\n")


def leading(frame: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    """``frame`` with the columns of ``first`` it has moved to the front, in that order."""
    cols = [c for c in first if c in frame]
    return frame[cols + [c for c in frame if c not in cols]]


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table with the CLI's cell format (integers as integers, blanks for missing)."""
    cells = frame.astype(object).map(format_value)
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def story(doc: str) -> str:
    """A model's docstring as Markdown: ``Title::`` blocks become fenced text blocks (a
    ``Generative story::`` title is dropped: the page's heading says it)."""
    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            if line.strip() != "Generative story::":  # the page's heading says it already
                out.append(line.rstrip()[:-1])
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                block.append(lines[i][4:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            out += ["", "```text", *block, "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def applicability(name: str) -> tuple[pd.DataFrame, object]:
    """Every back-end of the model: whether it applies to the default data and why not; and
    the problem built on that data (its latent sites, local ones included)."""
    spec = registry.get_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem, _ = api.prepare_problem(spec, None, None)
    rows = []
    for label, backend in registry.backends_for(spec).items():
        reason = registry.not_applicable(problem, backend)
        if reason is None and label in spec.backends.skip_by_default:
            status, why = "left out of the default comparison", spec.backends.skip_by_default[label]
        else:
            status, why = ("applies", "") if reason is None else ("does not apply", reason)
        star = " (default)" if label == spec.backends.default[0] else ""
        rows.append({"back-end": f"`{label}`{star}", "status": status, "what it is / why not": why or backend.summary})
    return pd.DataFrame(rows), problem


def comparison_section(name: str, files: Path) -> str:
    """The model's default comparison from the gallery's files, or how to make them."""
    run_json = files / "run.json"
    if not run_json.exists():
        return ("Not generated yet: `python docs/gallery.py --models " + name + "` writes this model's "
                "comparison, then rebuild the docs.\n")
    meta = json.loads(run_json.read_text())
    table = pd.read_csv(files / "table.csv")
    note = table["note"].fillna("") if "note" in table else pd.Series("", index=table.index)
    skipped = note.str.startswith(("not applicable", "left out by default", "failed"))
    ran = table[~skipped]
    extra = [c for c in ran if c not in scoring.COLUMNS]
    shown = [c for c in SHORT_COLUMNS + ["recommended"] + extra
             if c in ran and c != "note" and ran[c].notna().any()]
    settings = ", ".join(f"`{k}={v}`" for k, v in meta["settings"].items())
    parts = [f"`zoo.compare(\"{name}\")` on the default data (`zoo.simulate(\"{name}\", seed=0)`), "
             f"every back-end at its defaults except {settings}; {meta['wall_seconds']:g} s wall in all "
             f"(pyro {meta['versions']['pyro']}, torch {meta['versions']['torch']}, "
             f"arviz {meta['versions']['arviz']}). Every column: "
             f"{{download}}`table.csv </{GALLERY_FILES}/{name}/table.csv>`; per latent scalar: "
             f"{{download}}`scalars.csv </{GALLERY_FILES}/{name}/scalars.csv>`.", ""]
    if len(ran):
        parts += [markdown_table(ran[shown]), ""]
    notes = grouped_notes(table["backend"], note)
    if notes:
        parts += ["Notes and back-ends that did not run:", ""]
        parts += [f"- {', '.join(f'`{b}`' for b in bs)}: {n}" for n, bs in notes.items()] + [""]
    for fig, size in meta.get("figures_left_out", {}).items():
        parts += [f"`{fig}` is not shown: at {size} it does not fit a page (one panel per latent scalar).", ""]
    if meta.get("plot_error"):
        parts += [f"`Comparison.plot` failed on this model: `{meta['plot_error']}`.", ""]
    for fig in meta.get("figures", []):
        parts += [f"```{{image}} /{GALLERY_FILES}/{name}/{fig}", f":alt: {name}: {fig[:-4]} plot", "```", ""]
    return "\n".join(parts)


def gallery_page(name: str, docs: Path) -> str:
    spec = registry.get_model(name)
    backends, problem = applicability(name)
    local = [s for s in problem.latent_sites if s not in spec.latent_sites]
    data = pd.DataFrame([{"key": f"`{k}`", "shape": "(" + ", ".join(d.dims) + ")", "type": d.dtype,
                          "role": ("observed" if d.observed else "covariate") + (", optional" if d.optional else "")}
                         for k, d in spec.data.items()])
    hyper = pd.DataFrame([{"name": f"`{k}`", "default": json.dumps(h.default, default=jsonable)}
                          for k, h in spec.hyper.items()])
    doc = spec.doc
    title, _, rest = doc.strip().partition("\n\n")  # the summary is the first paragraph, however many lines
    title = " ".join(title.split())
    parts = ["---", "html_theme.sidebar_secondary.remove: true", "---", "", f"# `{name}`", "", f"**Seed section:** {spec.seed_section}", "", title, "",
             "## Generative story", "", story(rest.strip()), "",
             "## Data and latent sites", "", markdown_table(data) if len(data) else "(no data keys)", "",
             f"Global latent sites (scored in the tables): {', '.join(f'`{s}`' for s in spec.latent_sites) or 'none'}."
             + (f" Local latent sites: {', '.join(f'`{s}`' for s in local)}." if local else ""), ""]
    if len(hyper):
        parts += ["Hyperparameters (`hyper={...}`) and their defaults:", "", markdown_table(hyper), ""]
    parts += ["## Back-ends", "", markdown_table(backends), "",
              "## Default comparison", "", comparison_section(name, docs / GALLERY_FILES / name)]
    return "\n".join(parts)


def gallery_pages(docs: Path) -> None:
    """``gallery/index.md`` and one page per registered model."""
    rows = []
    for name in zoo.list_models():
        write_if_changed(docs / "gallery" / f"{name}.md", gallery_page(name, docs))
        spec = registry.get_model(name)
        table = docs / GALLERY_FILES / name / "table.csv"
        recommended = ""
        if table.exists():
            t = pd.read_csv(table)
            if "recommended" in t and t["recommended"].eq(True).any():
                recommended = f"`{t.loc[t['recommended'].eq(True), 'backend'].iloc[0]}`"
        rows.append({"model": f"[`{name}`]({name}.md)", "default back-end": f"`{spec.backends.default[0]}`",
                     "recommended": recommended, "seed section": spec.seed_section})  # prose last: it wraps
    index = ["# Model gallery", "",
             "One page per model of the registry: its generative story and section of the notes, its "
             "data keys and latent sites, the back-ends that apply, and its default comparison with "
             "its figures. The pages are generated from the registry (`zoo.list_models()`) and from "
             "the files `python docs/gallery.py` writes; `recommended` is the approximate back-end "
             "that passed the accuracy gate (|z| < 0.25, sd ratio 0.9 to 1.1 against the exact "
             "posterior) in the least time, blank where none was scored.", "",
             markdown_table(pd.DataFrame(rows)), "",
             "```{toctree}", ":hidden:", "", *zoo.list_models(), "```", ""]
    write_if_changed(docs / "gallery" / "index.md", "\n".join(index))


def benchmark_page() -> str:
    """Measured tables from the benchmark JSON files that are present; the missing ones say
    which command writes them."""
    parts = ["# Measured tables", "",
             "Rendered from the JSON the benchmark scripts write; nothing here is typed by hand. "
             "Timings are of the machine and the moment they were measured on.", "",
             "## NUTS speed and seconds to the accuracy gate", ""]
    if PERF_JSON.exists():
        perf = json.loads(PERF_JSON.read_text())
        rows = pd.DataFrame(perf.get("rows", []))
        if "seconds_to_gate" in rows and rows["seconds_to_gate"].notna().any():
            gated = rows[~rows["backend"].str.contains(":", na=False)]
            gate = gated.pivot_table(index="model", columns="backend", values="seconds_to_gate", aggfunc="first")
            parts += [f"Seconds to reach the accuracy gate ({json.dumps(perf.get('gate'))}; the cheapest budget of "
                      "`ladder` that passes, blank where none did or there is no reference):", "",
                      markdown_table(gate.reset_index()), ""]
        parts += [f"`benchmarks/perf.py` (seed {perf.get('seed')}, {perf.get('machine', '')}; each row's "
                  "options in its `settings`):", "", markdown_table(rows), ""]
        if perf.get("comparison"):
            parts += ["NUTS against NumPyro in the same run (bulk ESS per second; cold: NumPyro's first run, "
                      "compilation included; warm: its second run):", "",
                      markdown_table(leading(pd.DataFrame(perf["comparison"]), PEER_FIRST)), ""]
        if perf.get("peer"):
            parts += ["NumPyro's runs:", "",
                      markdown_table(leading(pd.DataFrame(perf["peer"]), ["model", "chain_method", "num_chains"])), ""]
    else:
        parts += [f"Missing: `{os.path.relpath(PERF_JSON, ROOT)}`. Write it with "
                  "`python benchmarks/perf.py --out benchmarks/results/perf.json`.", ""]
    parts += ["## The posteriordb suite against its reference posteriors", ""]
    if POSTERIORDB_JSON.exists():
        suite = json.loads(POSTERIORDB_JSON.read_text())
        parts += [f"`{suite.get('command')}` ({suite.get('date')}, seed {suite.get('seed')}, "
                  f"{json.dumps(suite.get('versions'))}). Each cell: correct against the stored reference "
                  "(every |z| < 0.25 or within 5 combined Monte Carlo standard errors, sd ratios 0.9-1.1), "
                  "the largest |z|, the sd ratios, the seconds, and nuts's divergences and deepest tree or "
                  "svi's steps (`cap`: stopped at the step cap, not converged).", "",
                  markdown_table(posteriordb_summary(suite["models"])), ""]
        left = [f"- `{m['name']}` {b}: {why}" for m in suite["models"] for b, why in m.get("left_out", {}).items()]
        parts += (["Left out:", "", *left, ""] if left else [])
    else:
        parts += [f"Missing: `{os.path.relpath(POSTERIORDB_JSON, ROOT)}`. Write it with "
                  "`python benchmarks/posteriordb_suite.py`.", ""]
    parts += ["## Simulation-based calibration of every model x back-end", ""]
    if SBC_REPORT.exists():
        rows = [json.loads(line) for line in SBC_REPORT.read_text().splitlines() if line.startswith("{")]
        table = pd.DataFrame(rows)
        parts += ["`benchmarks/sbc_table.py --report` (pass / FAIL per pair; n/a with its reason below):", "",
                  markdown_table(verdict_matrix(table).reset_index()), ""]
        shown = [c for c in ("model", "backend", "verdict", "min_p", "worst_scalar", "failed_scalars", "reading",
                             "simulations", "note") if c in table]
        parts += [markdown_table(table[shown]), ""]
    else:
        parts += [f"Missing: `{os.path.relpath(SBC_REPORT, ROOT)}`. Write it with "
                  "`python benchmarks/sbc_table.py --out sbc_runs` (the simulations, resumable), then "
                  "`python benchmarks/sbc_table.py --report --out sbc_runs > benchmarks/results/sbc_report.jsonl`. "
                  "The last full run's table (commit 2a7014c, 10.2 hours of back-end time) is in the "
                  "[calibration guide](guide/calibration.md).", ""]
    return "\n".join(parts)

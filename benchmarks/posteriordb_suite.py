"""Every back-end on every posteriordb suite model, scored against the stored reference.

Command line::

    python benchmarks/posteriordb_suite.py [--models NAME ...] [--backends nuts,svi,...]
        [--options JSON] [--jobs N] [--all] [--seed 0] [--out benchmarks/results/posteriordb.json]

For each model of the suite (``zoo.list_models(source="posteriordb")``) it runs
``zoo.compare`` with every back-end of the model at its defaults (the model's own option
defaults included: a dense metric or a higher target acceptance where its geometry needs
them, a full-rank guide where its posterior is strongly correlated) and svi with the other
Gaussian guide family (`other_gaussian`), prints the comparison table, and at the end one summary line per model, then writes
the tables as JSON. Back-ends that do not apply are listed with the reason; those `LEFT_OUT`
names for a model (runs over 2 minutes here, or a sampler known to be wrong on it) are not
run unless ``--all`` is given, and their rows say why. Scoring is
against the stored reference summaries (posteriordb's reference draws, or NumPyro's for
``wells_dist`` and ``radon_hierarchical_intercept_noncentered``): |z| and sd ratio per
scalar, with the reference's Monte Carlo error allowed for; no Wasserstein distance (there
are no reference draws to measure it by).

The JSON file (``--out``) holds::

    {"command": (the last run's), "seed": ..., "date": ..., "versions": {...}, "posteriordb_commit": ...,
     "fields": {column: meaning},             # the table columns, as below
     "models": [{"name", "posterior", "kind", "reference", "scalars", "defaults" (the
                 model's own option defaults per back-end: a dense metric, a higher target
                 acceptance, a full-rank guide), "options" (--options), "left_out"
                 ({back-end: why it was not run}), "load" (the machine's 1-minute load
                 average before and after the model's comparison), "command" and "date" (of the
                 run that made the record: ``--update`` keeps other runs' records), "error"
                 (only when the comparison raised), "not_run" (why a model has no rows), "rows": [{column: value}, ...]}]}   # one row per back-end; null = not measured

Columns of each row (``fields``): ``backend``; ``seconds`` (inference alone); ``draws``;
``ess_bulk_min``, ``ess_tail_min``, ``ess_per_second``, ``r_hat_max``; ``divergences``
(nuts, hmc); ``tree_depth_max`` and ``tree_depth_mean`` (nuts, from the sampler's
statistics where it records them); ``steps`` and ``converged`` (svi: the steps its
convergence rule used, and whether it stopped before the cap); ``elbo``; ``pareto_k``
(svi, importance: the importance ratios' tail, > 0.7 unreliable); ``max_abs_z`` (largest
|mean - reference mean| / reference sd over the model's latent scalars), ``sd_ratio_min``,
``sd_ratio_max``; ``correct`` (every scalar within |z| < 0.25, or within its Monte Carlo
noise, and sd ratios within 0.9-1.1); ``recommended`` (the correct back-end that took the
least time); ``note`` (why a back-end did not apply or failed, and what the run says of
itself).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import zoo
from zoo import registry
from zoo.core.files import write_text
from zoo.inference import svi
from zoo.posteriordb import POSTERIORDB_COMMIT
from zoo.scoring import recommend

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT: dict[str, dict[str, str]] = {
    # runs over 2 minutes on the 2-core machine (4 chains at the model's defaults, load about 5)
    "kilpisjarvi": {"nuts": "takes over 2 min: 508 s for 4 x (1000 + 500) with a dense metric, load 5.5 (correct: "
                            "|z| 0.05, sd ratios 0.97-1.01, r_hat 1.01, bulk ESS 661, tree depth 9, mean 6.9) "
                            "(2026-11-29)"},
    "gp_pois_regr": {"nuts": "takes over 2 min: 162 s for 4 x (500 + 1000) at target_accept 0.95 with a dense "
                             "metric, load 5.5 (correct: |z| 0.03, sd ratios 0.98-1.04, r_hat 1.005, bulk ESS 571, "
                             "1 divergence, tree depth 9) (2026-11-29)"},
}
"""Back-ends the suite leaves out per model by default, with why (``--all`` runs them)."""
COLUMNS = ["backend", "kind", "seconds", "draws", "ess_bulk_min", "ess_tail_min", "ess_per_second", "r_hat_max",
           "divergences", "tree_depth_max", "tree_depth_mean", "steps", "converged", "elbo", "pareto_k",
           "max_abs_z", "sd_ratio_min", "sd_ratio_max", "correct", "recommended", "note"]
FIELDS = dict(line.split(": ", 1) for line in """\
backend: back-end label
kind: what the draws are (zoo.core.spec.Fit.kind): mcmc (Markov chains), independent, resampled, point
seconds: wall time of the inference alone
draws: posterior draws (chains x draws per chain)
ess_bulk_min: smallest bulk effective sample size over the latent scalars
ess_tail_min: smallest tail effective sample size
ess_per_second: ess_bulk_min / seconds
r_hat_max: largest rank-normalised split r_hat (NaN for one chain)
divergences: divergent transitions (nuts, hmc)
tree_depth_max: deepest NUTS tree (where the sampler records it)
tree_depth_mean: mean NUTS tree depth
steps: SVI steps used by the convergence rule
converged: SVI: whether the rule stopped before the step cap (null: fixed schedule)
elbo: ELBO estimate (svi)
pareto_k: Pareto k of the importance ratios p/q (svi, importance); above 0.7 unreliable
max_abs_z: largest |mean - reference mean| / reference sd over the latent scalars
sd_ratio_min: smallest sd / reference sd
sd_ratio_max: largest sd / reference sd
correct: every |z| < 0.25 (or within 5 combined Monte Carlo standard errors) and sd ratios in 0.9-1.1
recommended: the correct back-end that took the least time (Markov chains also without a divergence and with r_hat at most 1.01)
note: why a back-end did not apply or failed, and notes of the run""".splitlines())


def json_value(v: Any) -> Any:
    """A table cell as a JSON value: numpy scalars as Python ones, NaN and inf as null."""
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def rows(cmp: Any) -> list[dict[str, Any]]:
    """The comparison table with the suite's columns: tree depth and SVI convergence added."""
    out = []
    for record in cmp.table.to_dict("records"):
        res = cmp.results.get(record["backend"])
        if res is not None:
            stats = res.idata.get("sample_stats")
            if stats is not None and "tree_depth" in stats:
                depth = stats["tree_depth"].values
                record["tree_depth_max"], record["tree_depth_mean"] = int(depth.max()), float(depth.mean())
            record["converged"] = res.diagnostics.get("converged")
            record["pareto_k"] = res.diagnostics.get("pareto_k", record.get("pareto_k"))
        out.append({c: json_value(record.get(c)) for c in COLUMNS})
    return out


SUMMARY_BACKENDS = ("nuts", "hmc", "svi", "importance")


def summary(models: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per model: its kind, its own option defaults, and per back-end of
    `SUMMARY_BACKENDS` (and svi with the other Gaussian guide family) whether it was correct
    against the reference, with |z|, the sd ratios, the seconds, and nuts's divergences and
    deepest tree or svi's steps (``cap``: stopped at the step cap); ``left out``, ``n/a``
    (not applicable) or ``failed`` otherwise; then the recommended back-end (the fastest
    correct one)."""
    out = []
    for record in models:
        by = {r["backend"]: r for r in record["rows"]}
        row = {"model": record["name"], "kind": record.get("kind", ""),
               "defaults": "; ".join(f"{b}: " + ", ".join(f"{k}={v}" for k, v in o.items())
                                     for b, o in record.get("defaults", {}).items())}
        other = next((r["backend"] for r in record["rows"] if r["backend"].startswith("svi:")), None)
        for label in SUMMARY_BACKENDS:
            row[label] = (cell(by.get(label)) if "error" not in record and "not_run" not in record
                          else "not run" if "not_run" in record else "failed: " + record["error"][:80])
            if label == "svi":
                row["svi, other guide"] = f"{other.split(':')[1]}: {cell(by[other])}" if other else "n/a"
        row["recommended"] = next((r["backend"] for r in record["rows"] if r.get("recommended")), "none")
        out.append(row)
    return pd.DataFrame(out)


def cell(r: dict[str, Any] | None) -> str:
    """A back-end's verdict on one model, as the summary shows it."""
    note = (r or {}).get("note") or ""
    if r is None or note.startswith("not applicable"):
        return "n/a"
    if note.startswith("left out"):
        return "left out"
    if r["max_abs_z"] is None:
        return "failed"
    extra = (f", {r['divergences'] or 0:.0f} div, depth {r['tree_depth_max']:.0f}" if r["backend"] == "nuts"
             else f", {r['divergences'] or 0:.0f} div" if r["backend"] == "hmc"
             else f", {r['steps']:.0f} steps{'' if r['converged'] else ' (cap)'}" if r["steps"] is not None else "")
    sd = f"{r['sd_ratio_min']:.2f}-{r['sd_ratio_max']:.2f}"
    return f"{'yes' if r['correct'] else 'no'} (|z| {r['max_abs_z']:.2f}, sd {sd}, {r['seconds']:.0f} s{extra})"


def other_gaussian(spec: Any) -> str:
    """The svi label of the Gaussian family that is not the model's default guide: full-rank
    beside mean-field, or mean-field beside a model's full-rank default, so that the table
    shows what the other family makes of the posterior."""
    default = {**svi.SVI_OPTIONS, **spec.backends.options.get("svi", {})}["guide"]
    return "svi:mean_field" if default == "full_rank" else "svi:full_rank"


def compare_one(name: str, labels: list[str] | None, seed: int, options: dict[str, dict[str, Any]],
                left_out: dict[str, str]) -> tuple[dict[str, Any], str]:
    """``zoo.compare`` on one suite model: its JSON record and the text printed for it. The
    back-ends in ``left_out`` are not run; their rows say why. An error the comparison raises
    is recorded (``error``) instead of stopping the suite."""
    spec = zoo.get_model(name)
    labels = [k for k in (labels or [*registry.backends_for(spec), other_gaussian(spec)]) if k not in left_out]
    defaults = {k: dict(v) for k, v in spec.backends.options.items() if v}
    start, load = time.perf_counter(), os.getloadavg()[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cmp = zoo.compare(name, backends=labels, seed=seed,
                              options={k: v for k, v in options.items() if k in labels})
    except Exception as e:  # noqa: BLE001 - a benchmark records what broke and goes on
        return ({"name": name, "kind": spec.kind, "defaults": defaults, "left_out": left_out,
                 "error": f"{type(e).__name__}: {e}"[:2000], "rows": []},
                f"\n## {name}: failed: {type(e).__name__}: {str(e)[:300]}")
    table = rows(cmp) + [{**dict.fromkeys(COLUMNS), "backend": k, "note": f"left out: {why}"}
                         for k, why in left_out.items()]
    text = f"\n## {name} ({time.perf_counter() - start:.0f} s)\n\n" + cmp.table[
        [c for c in ("backend", "seconds", "ess_bulk_min", "r_hat_max", "divergences", "steps", "max_abs_z",
                     "sd_ratio_min", "sd_ratio_max", "correct", "note") if c in cmp.table]
    ].to_markdown(index=False, floatfmt=".3g")
    exact = cmp.exact
    return ({"name": name, "posterior": exact.extra.get("posterior") if exact else None,
             "kind": spec.kind, "reference": exact.kind if exact else None,
             "scalars": int(sum(np.size(v) for v in exact.mean.values())) if exact else None,
             "defaults": defaults, "options": options, "left_out": left_out,
             "load": [round(load, 2), round(os.getloadavg()[0], 2)], "rows": table}, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=zoo.list_models(source="posteriordb"))
    parser.add_argument("--backends", help="comma-separated labels (default: every back-end of the model)")
    parser.add_argument("--options", type=json.loads, default={},
                        help='per-back-end options as JSON, e.g. \'{"nuts": {"sampler": "pyro"}}\'')
    parser.add_argument("--jobs", type=int, default=1, help="models compared at once, one process each")
    parser.add_argument("--all", action="store_true", help="run the back-ends LEFT_OUT leaves out too")
    parser.add_argument("--update", action="store_true",
                        help="keep the other models' records of an existing --out file (re-run some models)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "posteriordb.json")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(zoo.list_models(source="posteriordb")))
    if unknown:
        parser.error(f"not in the posteriordb suite: {unknown}")
    labels = args.backends.split(",") if args.backends else None
    done: dict[str, dict[str, Any]] = {}
    if args.update and args.out.exists():
        done = {m["name"]: m for m in json.loads(args.out.read_text())["models"]}
    order = [n for n in zoo.list_models(source="posteriordb") if n in done or n in args.models]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(compare_one, name, labels, args.seed, args.options,
                               {} if args.all else LEFT_OUT.get(name, {})): name for name in args.models}
        for future in as_completed(futures):
            record, text = future.result()
            print(text, flush=True)
            if labels and record["name"] in done and "error" not in record:
                record = merged(done[record["name"]], record, command(argv))
            done[record["name"]] = {**record, "command": command(argv), "date": time.strftime("%Y-%m-%d %H:%M")}
            write(args.out, argv, args.seed, [done[n] for n in order if n in done])  # keeps partial runs
    print("\n" + summary([done[n] for n in order]).to_markdown(index=False))
    print(f"\nwrote {args.out}")
    return 0


def merged(old: dict[str, Any], new: dict[str, Any], cmd: str) -> dict[str, Any]:
    """A model's record re-run for some back-ends (``--update --backends``): the new rows
    replace those back-ends' old rows, the other back-ends' rows are kept (each row's
    ``note`` and the record's ``runs`` say which run made it), and ``recommended`` is marked
    again over all rows (`zoo.scoring.recommend`)."""
    ran = {r["backend"] for r in new["rows"]}
    kept = [r for r in old.get("rows", []) if r["backend"] not in ran]
    table = recommend(pd.DataFrame(kept + new["rows"], columns=COLUMNS))
    runs = old.get("runs") or [{"backends": sorted({r["backend"] for r in old.get("rows", [])}),
                                "command": old.get("command"), "date": old.get("date"), "load": old.get("load")}]
    runs = runs + [{"backends": sorted(ran), "command": cmd, "date": time.strftime("%Y-%m-%d %H:%M"),
                    "load": new.get("load")}]
    left_out = {**{k: v for k, v in old.get("left_out", {}).items() if k not in ran}, **new.get("left_out", {})}
    old = {k: v for k, v in old.items() if k not in ("not_run", "error")}
    return {**old, **new, "left_out": left_out, "runs": runs,
            "rows": [{c: json_value(v) for c, v in row.items()} for row in table.to_dict("records")]}


def command(argv: list[str] | None) -> str:
    """The command line that ran the benchmark."""
    return " ".join(["python", "benchmarks/posteriordb_suite.py", *(argv if argv is not None else sys.argv[1:])])


def write(out: Path, argv: list[str] | None, seed: int, models: list[dict[str, Any]]) -> None:
    """The JSON file (see the module docstring), written atomically."""
    versions = {p: metadata.version(p) for p in ("torch", "pyro-ppl", "arviz", "numpy")}
    write_text(out, json.dumps({"command": command(argv), "seed": seed, "date": time.strftime("%Y-%m-%d"),
                                "versions": versions, "posteriordb_commit": POSTERIORDB_COMMIT,
                                "fields": FIELDS, "models": models}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())

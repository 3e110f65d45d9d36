"""Every back-end on every model, scored against the exact posterior or the model's peer.

Runs ``zoo.compare`` for each model with all of its back-ends (generic and model-specific) on
data simulated with ``--seed`` (and its truth, for the clustering scores), at the back-ends'
default settings, or at small ones with ``--quick``. Prints one markdown table per model with
a row per applicable back-end and the model's own score columns (log-likelihood per point
beside scikit-learn's, adjusted Rand index, occupied clusters ...); back-ends that do not apply,
or that the model leaves out of its default comparison as too slow, are listed with the reason. This is a benchmark, not a test: nothing is
asserted, and the timings depend on the machine and its load.

Examples::

    python benchmarks/backends.py --quick
    python benchmarks/backends.py --models normal_gamma,beta_bernoulli --out bench.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

import zoo
from zoo import registry, scoring

COLUMNS = ["model", "backend", "seconds", "steps", "ess_per_second", "r_hat_max", "elbo", "max_abs_z",
           "sd_ratio_min", "sd_ratio_max", "correct", "recommended"]
# --quick: short chains, short SVI runs and fewer particles; every back-end takes the options
# it accepts and ignores the others.
QUICK = {"num_samples": 200, "num_warmup": 200, "num_chains": 2, "num_steps": 500}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None,
                        help="comma-separated model names (default: every registered model)")
    parser.add_argument("--quick", action="store_true", help=f"small settings: {QUICK}")
    parser.add_argument("--out", type=Path, default=None, help="write every row (all table columns) as JSON here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated data and of every back-end")
    args = parser.parse_args(argv)
    names = zoo.list_models() if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in zoo.list_models()]
    if unknown or not names:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(zoo.list_models())}")
    args.models = names
    return args


def benchmark(model: str, *, quick: bool, seed: int) -> pd.DataFrame:
    """The comparison table of every back-end of ``model``, with a ``model`` column first.

    Each back-end runs in its own ``zoo.compare`` call (same data, same seed, so the same
    exact reference draws), so that one back-end that fails is reported in its row instead of
    losing the others.
    """
    data, truth = zoo.simulate(model, seed=seed)
    spec = zoo.get_model(model)
    rows = []
    for backend in zoo.list_backends(model):
        if backend in spec.backends.skip_by_default:
            rows.append(pd.DataFrame([{"backend": backend,
                                       "note": f"not applicable: left out of the default comparison: {spec.backends.skip_by_default[backend]}"}]))
            continue
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                accepted = registry.get_backend(zoo.get_model(model), backend).options
                settings = {k: v for k, v in QUICK.items() if k in accepted} if quick else {}
                cmp = zoo.compare(model, backends=[backend], data=data, seed=seed, truth=truth, **settings)
            rows.append(cmp.table)
        except Exception as e:  # a benchmark reports failures, it does not stop on them
            print(f"[{model}] {backend} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            rows.append(pd.DataFrame([{"backend": backend, "seconds": time.perf_counter() - start,
                                       "note": f"error: {type(e).__name__}: {str(e)[:200]}"}]))
    # each back-end ran alone: the fastest correct one is picked across them here
    return scoring.recommend(pd.concat(rows, ignore_index=True)).assign(model=model)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


def render(full: pd.DataFrame) -> str:
    """One markdown table per model over the applicable back-ends, with the model's own score
    columns, then one line per back-end that does not apply (with the reason) or failed."""
    notes = full["note"].fillna("") if "note" in full else pd.Series("", index=full.index)
    applies = ~notes.str.startswith("not applicable")
    lines = []
    for model, part in full.loc[applies].groupby("model", sort=False):
        scores = [c for c in part.columns if c not in scoring.COLUMNS and c != "model"
                  and part[c].map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all()
                  and part[c].notna().any()]
        lines += [f"\n{model}\n", _table(part[[c for c in COLUMNS + scores if c in part.columns]])]
    lines += [f"- {r.model} / {r.backend}: {r.note}" for r in full.loc[~applies].itertuples(index=False)]
    lines += [f"- FAILED {r.model} / {r.backend}: {r.note}"
              for r in full.loc[notes.str.startswith("error")].itertuples(index=False)]
    return "\n".join(lines)


def _table(table: pd.DataFrame) -> str:
    table = table.dropna(axis=1, how="all").copy()
    for col in ("correct", "recommended"):  # a failed back-end has no score: leave the cell empty
        if col in table:
            table[col] = [("" if pd.isna(v) else str(bool(v))) for v in table[col]]
    return table.to_markdown(index=False, floatfmt=".3g")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    tables = []
    for model in args.models:
        start = time.perf_counter()
        print(f"[{model}] running ...", file=sys.stderr, flush=True)
        tables.append(benchmark(model, quick=args.quick, seed=args.seed))
        print(f"[{model}] done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    full = pd.concat(tables, ignore_index=True)
    full = full[["model"] + [c for c in full.columns if c != "model"]]
    settings = "quick " + json.dumps(QUICK) if args.quick else "default settings"
    print(f"\nBack-ends against the exact posterior or the model's peer ({settings}, seed {args.seed})")
    print(render(full))

    if args.out is not None:
        payload = {
            "settings": QUICK if args.quick else "defaults",
            "seed": args.seed,
            "python": platform.python_version(),
            "machine": platform.platform(),
            "rows": [{k: _jsonable(v) for k, v in r.items()} for r in full.to_dict(orient="records")],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
        print(f"\nwrote {args.out}", file=sys.stderr)
    return full


if __name__ == "__main__":
    main()

"""Every back-end on every model, scored against the exact posterior: one markdown table.

Runs ``zoo.compare`` for each model with all of its back-ends (generic and model-specific) on
data simulated with ``--seed``, at the back-ends' default settings, or at small ones with
``--quick``. Prints one table with a row per model and applicable back-end; back-ends that do
not apply are listed with the reason underneath. This is a benchmark, not a test: nothing is
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

COLUMNS = ["model", "backend", "seconds", "ess_per_second", "max_abs_z", "sd_ratio_min",
           "sd_ratio_max", "correct"]
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
    """The comparison table of every back-end of ``model``, with a ``model`` column first."""
    data, _ = zoo.simulate(model, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = zoo.compare(model, backends=None, data=data, seed=seed, **(QUICK if quick else {}))
    return cmp.table.assign(model=model)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


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
    applies = ~full.get("note", pd.Series("", index=full.index)).fillna("").str.startswith("not applicable")
    table = full.loc[applies, [c for c in COLUMNS if c in full.columns]]

    settings = "quick " + json.dumps(QUICK) if args.quick else "default settings"
    print(f"\nBack-ends against the exact posterior ({settings}, seed {args.seed})\n")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    for row in full.loc[~applies].itertuples(index=False):
        print(f"- {row.model} / {row.backend}: {row.note}")

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
    return table


if __name__ == "__main__":
    main()

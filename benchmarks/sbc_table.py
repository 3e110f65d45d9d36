"""The SBC verdict of every model x applicable back-end, as one markdown table.

For each pair, ``zoo.sbc`` runs ``--simulations`` simulations (prior draw, data, posterior),
ranks each truth among ``--draws`` thinned posterior draws and tests the ranks for uniformity
(chi-square per latent scalar, Bonferroni over scalars at ``alpha = 0.01``). Back-ends run at
the modest settings in ``SETTINGS`` (their defaults for the rest). Every simulation is
written to ``--out/<model>/<backend>/<seed>.json``, so an interrupted table resumes, and each
finished pair's verdict is added to ``--out/verdicts.jsonl``. A row gives the smallest p-value
and its scalar, how many scalars failed and what their ranks' shape reads as (too narrow,
too wide, shifted), the simulations whose ESS fell short of L, and ``seconds``, the back-end's
time summed over the simulations (``wall_seconds`` is this call's, small when it resumes).

Pairs that are not run say why: the back-end does not apply to the model (``zoo`` says why;
it is asked about a data set other than seed 0's, since SBC simulates fresh data and a stored
reference posterior belongs to one data set), it returns a point estimate (``em``, ``mle``,
``nce``: no posterior width to calibrate), the model has no global latent sites (the deep
models: their networks are point estimates), or the model leaves the back-end out of its
default comparison as too slow.

Examples::

    python benchmarks/sbc_table.py --models normal_gamma --backends exact,nuts,svi
    python benchmarks/sbc_table.py --executor ray --out sbc_runs   # everything, resumable
    python benchmarks/sbc_table.py --report --out sbc_runs         # the table so far, runs nothing
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import zoo
from zoo import registry
from zoo.core.files import write_text
from zoo.core.problem import prepare
from zoo.tasks import Task

POINT_ESTIMATES = {"em": "EM returns a point estimate (no posterior width to calibrate)",
                   "mle": "maximum likelihood: a point estimate",
                   "nce": "noise-contrastive estimation: a point estimate"}
MIN_REPORTED = 20  # --report scores a pair from at least this many simulations (4 bins of 5 ranks)
SETTINGS = {
    "nuts": {"num_warmup": 200, "num_samples": 100, "num_chains": 2},
    "hmc": {"num_warmup": 200, "num_samples": 100, "num_chains": 2},
    "svi": {"num_steps": 2000},
    "enum": {"num_steps": 2000},
    "importance": {"num_particles": 5000},
}


def pairs(models: list[str], backends: list[str] | None) -> list[tuple[str, str, str | None]]:
    """(model, back-end, reason not run or None) for every pair asked for."""
    out = []
    for name in models:
        spec = registry.get_model(name)
        # SBC runs every back-end on fresh data sets, so ask about one other than seed 0's
        # (a stored reference posterior, for one, applies to seed 0's data only).
        problem = prepare(spec, zoo.simulate(name, seed=1)[0], None)
        for label, backend in registry.backends_for(spec).items():
            if backends is not None and label not in backends:
                continue
            reason = registry.not_applicable(problem, backend)
            if reason is None and label in POINT_ESTIMATES:
                reason = POINT_ESTIMATES[label]
            if reason is None and label in spec.backends.skip_by_default:
                reason = f"not run: left out of the default comparison ({spec.backends.skip_by_default[label]})"
            if reason is None and not spec.latent_sites:
                reason = "no global latent sites: the network weights are point estimates"
            out.append((name, label, reason))
    return out


def verdict(name: str, label: str, args: argparse.Namespace) -> dict:
    """Run one pair's SBC and summarise it in one row."""
    backend = registry.backends_for(registry.get_model(name))[label]
    options = {k: v for k, v in SETTINGS.get(label, {}).items() if k in backend.options}
    start = time.perf_counter()
    try:
        r = zoo.sbc(name, label, num_simulations=args.simulations, num_draws=args.draws, seed=args.seed,
                    executor=args.executor, out=args.out, progress=False, **options)
    except zoo.ZooError as e:
        return {"model": name, "backend": label, "verdict": "error", "note": str(e)}
    worst = r.tests.loc[r.tests["p_value"].idxmin()]
    failed = r.tests[~r.tests["passed"]]
    return {"model": name, "backend": label, "verdict": "passed" if r.passed else "FAILED",
            "min_p": float(worst["p_value"]), "worst_scalar": worst["scalar"], "threshold": r.threshold,
            "scalars": len(r.tests), "failed_scalars": len(failed),
            "reading": "; ".join(f"{reading} on {', '.join(group['scalar'])}"
                                 for reading, group in failed.groupby("reading") if reading),
            "low_ess_sims": int((r.runs["ess_bulk_min"] < args.draws).sum()),
            "seconds": round(float(r.runs["seconds"].sum()), 1), "wall_seconds": round(time.perf_counter() - start, 1),
            "settings": json.dumps(options), "note": r.note}


def reported(name: str, label: str, args: argparse.Namespace) -> dict:
    """A pair's row from the simulations on disk: the first n consecutive seeds, n <= --simulations."""
    n = 0
    while n < args.simulations and Task("sbc", name, label, args.seed + n).path(args.out).exists():
        n += 1
    if n < MIN_REPORTED:
        return {"model": name, "backend": label, "verdict": "not run", "note": f"{n} simulations on disk"}
    return {**verdict(name, label, argparse.Namespace(**{**vars(args), "simulations": n})),
            "simulations": n, "draws": args.draws}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated (default: every registered model)")
    parser.add_argument("--backends", default=None, help="comma-separated (default: every back-end)")
    parser.add_argument("--simulations", type=int, default=40)
    parser.add_argument("--draws", type=int, default=19, help="L: ranks take L + 1 values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--executor", default="local", choices=["local", "ray"])
    parser.add_argument("--out", type=Path, default=Path("sbc_runs"))
    parser.add_argument("--report", action="store_true",
                        help="run nothing: score each pair from the simulations already under --out "
                             f"(the first n seeds, n <= --simulations, at least {MIN_REPORTED})")
    args = parser.parse_args(argv)
    models = zoo.list_models() if args.models is None else args.models.split(",")
    backends = None if args.backends is None else args.backends.split(",")
    warnings.filterwarnings("ignore")
    done_file = args.out / "verdicts.jsonl"
    done = {}
    if done_file.exists():
        for line in done_file.read_text().splitlines():
            row = json.loads(line)
            done[(row["model"], row["backend"], row.get("simulations"), row.get("draws"))] = row
    rows = []
    for name, label, reason in pairs(models, backends):
        key = (name, label, args.simulations, args.draws)
        if reason is not None:
            row = {"model": name, "backend": label, "verdict": "n/a", "note": reason}
        elif args.report:  # from the simulation files, never the cached verdicts, which they may have outdated
            row = reported(name, label, args)
        elif key in done:
            row = done[key]
        else:
            row = {**verdict(name, label, args), "simulations": args.simulations, "draws": args.draws}
            done[key] = row
            write_text(done_file, "".join(json.dumps(r) + "\n" for r in done.values()))
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = pd.DataFrame(rows)
    print(table.drop(columns=[c for c in ("settings",) if c in table]).to_markdown(index=False, floatfmt=".3g"))
    print()
    print(verdict_matrix(table).to_markdown())


def verdict_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """Models x back-ends, each cell the verdict (pass, FAIL, n/a, not run or error), in run
    order; a verdict from other than the most common number of simulations gives it."""
    cells = table.assign(verdict=table["verdict"].replace({"passed": "pass", "FAILED": "FAIL"}))
    if "simulations" in cells:
        usual = cells["simulations"].mode().iloc[0]
        other = cells["simulations"].notna() & (cells["simulations"] != usual)
        cells.loc[other, "verdict"] += cells.loc[other, "simulations"].map(lambda n: f" ({int(n)} sims)")
    matrix = cells.pivot(index="model", columns="backend", values="verdict").fillna("")
    return matrix.loc[list(dict.fromkeys(table["model"])), list(dict.fromkeys(table["backend"]))]


if __name__ == "__main__":
    main()

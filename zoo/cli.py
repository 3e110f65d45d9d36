"""Command line: ``python -m zoo list | run | compare | compare-models | sbc | grid | bandit``.

Examples::

    python -m zoo list
    python -m zoo run normal_gamma --backend nuts --seed 0 --out out/ng
    python -m zoo compare normal_gamma --backends exact,nuts,svi,cavi --out out/ng
    python -m zoo compare bayesian_linear_regression --hyper prior=laplace --num-steps 2000
    python -m zoo compare-models gaussian_mixture:K=2 gaussian_mixture:K=3 --backend enum --out out/k
    python -m zoo sbc normal_gamma --backend nuts --simulations 200 --out out/sbc --executor ray
    python -m zoo grid --models beta_bernoulli,poisson_gamma --backends exact,svi --seeds 3 --out out/grid
    python -m zoo bandit --probs 0.1,0.2,0.3 --horizon 2000 --policy thompson,ucb1 --seeds 5 --out out/b
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import unicodedata
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoo import api, bandit, calibration, grids, model_comparison, registry, scoring
from zoo.core.errors import InferenceError, ZooError
from zoo.core.files import write_text

# Back-end options offered as flags, with their help; each is passed only when given, and
# `compare` gives it to every back-end that accepts it.
OPTION_FLAGS = {
    "num_samples": (int, "posterior draws per chain (svi, exact: draws taken from the fit)"),
    "num_warmup": (int, "warm-up iterations per chain (nuts, hmc)"),
    "num_chains": (int, "number of chains (nuts, hmc; exact and svi split their draws into chains)"),
    "num_steps": (int, "the most optimisation steps (svi and the model's own optimisers)"),
    "lr": (float, "learning rate (svi)"),
    "guide": (str, "guide family (svi): mean_field, diag, full_rank, low_rank, flow, delta, laplace"),
    "proposal": (str, "proposal of importance sampling: prior or a fitted guide"),
}
WIDTH = 120  # the terminal width `compare`, `grid` and `sbc` tables fit
LIST_WIDTH = 100
# What `compare` prints first; then the ELBO, the log evidence and the model's own scores,
# each while the line still fits. The recommended back-end is starred.
SHORT_COLUMNS = ["backend", "seconds", "draws", "ess_bulk_min", "r_hat_max", "divergences", "max_abs_z",
                 "sd_ratio_min", "sd_ratio_max", "correct", "elbo", "log_evidence"]
NOT_RUN = ("not applicable: ", "left out by default", "failed: ")


def _key_values(items: list[str], what: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ZooError(f"{what} must be KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _load_data(path: str | None) -> dict[str, Any] | None:
    """Data from a .npz or .json file of named arrays."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise ZooError(f"data file {path!r} does not exist")
    if p.suffix == ".npz":
        with np.load(p) as f:
            return {k: f[k] for k in f.files}
    if p.suffix == ".json":
        return json.loads(p.read_text())
    raise ZooError(f"data file {path!r} must be .npz or .json")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the models, the back-ends that apply to each, where each comes from "
                                "and its seed section")
    flags = argparse.ArgumentParser(add_help=False)  # what every inference command takes
    flags.add_argument("--hyper", action="append", default=[], metavar="KEY=VALUE",
                       help="hyperparameter, VALUE in JSON (repeatable)")
    flags.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other back-end option, VALUE in JSON (repeatable)")
    flags.add_argument("--out", metavar="DIR", help="folder for results")
    flags.add_argument("--no-progress", action="store_true",
                       help="hide progress bars (they show only when stderr is a terminal)")
    for flag, (kind, text) in OPTION_FLAGS.items():
        flags.add_argument("--" + flag.replace("_", "-"), type=kind, dest=flag, help=text)
    fanout = argparse.ArgumentParser(add_help=False)  # sbc and grid: many independent tasks
    fanout.add_argument("--executor", default="local", choices=("local", "ray"),
                        help="run the tasks in this process or on Ray (pip install \"pyro-model-zoo[ray]\")")
    fanout.add_argument("--address", help="Ray cluster to join (default: start a local one)")
    wide = argparse.ArgumentParser(add_help=False)
    wide.add_argument("--wide", action="store_true",
                      help=f"print every column (default: a short set that fits {WIDTH} columns)")
    common = argparse.ArgumentParser(add_help=False, parents=[flags])
    common.add_argument("name", help="model name (python -m zoo list)")
    common.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same numbers")
    common.add_argument("--data", metavar="FILE", help=".npz or .json file of named arrays (default: simulated)")
    run = sub.add_parser("run", parents=[common], help="run one back-end and print its summary and diagnostics")
    run.add_argument("--backend", help="back-end label such as nuts or svi:full_rank (default: the model's own "
                                       "default, e.g. exact where there is a closed form)")
    compare = sub.add_parser("compare", parents=[common, wide],
                             help="compare back-ends against the exact posterior")
    compare.add_argument("--backends", help="comma-separated labels (default: all of the model's)")
    models = sub.add_parser("compare-models", parents=[flags, wide],
                            help="rank models or hyperparameter settings on the same data by PSIS-LOO")
    models.add_argument("models", nargs="+", metavar="MODEL[:KEY=VALUE,...]",
                        help="a model name, with hyperparameters after a colon (gaussian_mixture:K=3)")
    models.add_argument("--backend", default="nuts", help="the back-end every model runs under")
    models.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same numbers")
    models.add_argument("--data", metavar="FILE",
                        help=".npz or .json file of named arrays (default: the first model's)")
    calib = sub.add_parser("sbc", parents=[common, fanout, wide],
                           help="simulation-based calibration of a back-end (ranks of prior draws)")
    calib.add_argument("--backend", default="nuts", help="back-end label to calibrate (default nuts)")
    calib.add_argument("--simulations", type=int, default=100, help="number of simulations")
    calib.add_argument("--draws", type=int, default=99, help="thinned posterior draws each truth is ranked among")
    many = sub.add_parser("grid", parents=[flags, fanout, wide], help="every model x back-end x seed, one long table")
    many.add_argument("--models", required=True, help="comma-separated model names")
    many.add_argument("--backends", required=True, help="comma-separated back-end labels")
    many.add_argument("--seeds", type=int, default=1, help="number of seeds (0..SEEDS-1)")
    play = sub.add_parser("bandit", help="play a Bernoulli bandit: Thompson sampling, UCB1, epsilon-greedy")
    play.add_argument("--probs", required=True, help="comma-separated success probabilities of the arms")
    play.add_argument("--horizon", type=int, default=1000, help="rounds per run")
    play.add_argument("--policy", default="thompson",
                      help="comma-separated: thompson, ucb1, epsilon_greedy; thompson:BACKEND for Thompson "
                           "sampling on that back-end")
    play.add_argument("--backend", default="exact", help="Thompson sampling's posterior (default exact)")
    play.add_argument("--refit", type=int, default=1, help="update the posterior every REFIT rounds")
    play.add_argument("--epsilon", type=float, default=0.1, help="exploration rate of epsilon_greedy")
    play.add_argument("--seed", type=int, default=0, help="first seed")
    play.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...)")
    play.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="back-end option for Thompson refits, VALUE in JSON (repeatable)")
    play.add_argument("--out", metavar="DIR", help="folder for bandit.csv and regret.png")
    return parser


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def format_value(value: Any) -> str:
    """A table cell: integers as integers, floats to 4 significant digits without an exponent
    below 10^9, booleans as yes/no, missing values blank."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if float(value).is_integer() and abs(value) < 1e9:
            return str(int(value))
        if abs(value) >= 1e4:
            return f"{value:.0f}" if abs(value) < 1e9 else f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def format_table(table: pd.DataFrame, columns: list[str] | None = None, width: int | None = WIDTH) -> str:
    """``table`` as aligned text: ``columns`` first (those present and not all blank), then
    the others while the line fits ``width`` (None: every column)."""
    cells = table.astype(object).map(format_value) if len(table) else table.astype(str)
    filled = [c for c in table if cells[c].ne("").any()]
    order = [c for c in (columns or []) if c in filled] + [c for c in filled if c not in (columns or [])]

    def col_width(c: str) -> int:
        return max([display_width(c)] + [display_width(v) for v in cells[c]])

    chosen, used = [], 0
    for c in order:
        w = col_width(c) + (2 if chosen else 0)
        if width is not None and used + w > width and chosen:
            continue
        chosen.append(c)
        used += w
    lines = []
    for row in [dict(zip(chosen, chosen))] + [dict(r) for _, r in cells[chosen].iterrows()]:
        parts = []
        for c in chosen:
            text, pad = row[c], col_width(c) - display_width(row[c])
            numeric = c != "backend" and pd.api.types.is_numeric_dtype(table[c])
            parts.append(" " * pad + text if numeric else text + " " * pad)
        lines.append("  ".join(parts).rstrip())
    hidden = len(filled) - len(chosen)
    if hidden:
        lines.append(f"({hidden} more column{'s' if hidden > 1 else ''}: --wide, or table.csv with --out)")
    return "\n".join(lines)


def print_comparison(table: pd.DataFrame, wide: bool = False) -> None:
    """The comparison table: back-ends that ran, a short column set unless ``wide``; below
    it each row's note, and the back-ends that did not run with the reason."""
    note = table["note"].fillna("") if "note" in table else pd.Series("", index=table.index)
    skipped = note.str.startswith(NOT_RUN)
    ran = table[~skipped].drop(columns=["note"], errors="ignore")
    extra = [c for c in ran if c not in scoring.COLUMNS]  # the model's own scores
    starred = ran["recommended"].eq(True) if "recommended" in ran and not wide else None
    if starred is not None:
        ran = ran.drop(columns="recommended").assign(backend=ran["backend"] + starred.map({True: "*", False: ""}))
    if len(ran):
        print(format_table(ran, SHORT_COLUMNS + extra, None if wide else WIDTH))
    if starred is not None and starred.any():
        print("* recommended: the approximate back-end that passed the accuracy gate in the least time")
    wrap = textwrap.TextWrapper(width=WIDTH, subsequent_indent="    ")
    notes = grouped_notes(table["backend"][~skipped], note[~skipped])
    if notes:
        print("\nnotes:")
        for n, bs in notes.items():
            print(wrap.fill(f"  {', '.join(bs)}: {n}"))
    if skipped.any():
        print("\nnot run:")
        for b, n in zip(table["backend"][skipped], note[skipped]):
            print(wrap.fill(f"  {b}: {n}"))


def grouped_notes(backends: Any, notes: Any) -> dict[str, list[str]]:
    """Each distinct non-empty note and the back-ends that carry it, in table order (a note
    shared by every back-end, such as how draws were relabelled, is shown once)."""
    out: dict[str, list[str]] = {}
    for backend, note in zip(backends, notes):
        if note:
            out.setdefault(note, []).append(backend)
    return out


def print_diagnostics(diagnostics: dict[str, Any], title: str) -> None:
    """Scalar entries one per line; short lists and dicts in full; long ones by their length."""
    print(f"\n{title}:")
    for k, v in diagnostics.items():
        if isinstance(v, np.ndarray) and v.size <= 6:
            v = v.tolist()
        if isinstance(v, (list, tuple, dict)) and len(v) > 6 or isinstance(v, np.ndarray):
            shape = np.shape(v) if not isinstance(v, dict) else (len(v),)
            text = f"({' x '.join(map(str, shape))} values)"
        elif isinstance(v, (list, tuple)):
            text = "[" + ", ".join(format_value(x) for x in v) + "]"
        elif isinstance(v, dict):
            text = "{" + ", ".join(f"{a}: {format_value(b)}" for a, b in v.items()) + "}"
        else:
            text = format_value(v)
        print(textwrap.fill(f"  {k}: {text}", width=WIDTH, subsequent_indent="    "))


def wrap_display(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` terminal columns (see `display_width`), broken at
    spaces."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if line and display_width(candidate) > width:
            lines.append(line)
            candidate = word
        line = candidate
    return lines + [line] if line else lines


def list_lines(width: int = LIST_WIDTH) -> list[str]:
    """``zoo list``: per model the back-ends that apply to its default data (its default
    back-end starred), then its seed section, in lines of at most ``width`` columns."""
    names = api.list_models()
    pad = max(map(len, names)) + 2
    lines = []
    for name in names:
        spec = registry.get_model(name)
        with warnings.catch_warnings():  # simulating the default data may warn (a singular draw)
            warnings.simplefilter("ignore")
            problem, _ = api.prepare_problem(spec, None, None)
        applies = [k + ("*" if k == spec.backends.default[0] else "")
                   for k, b in registry.backends_for(spec).items() if not registry.not_applicable(problem, b)]
        for i, line in enumerate(wrap_display(" ".join(applies), width - pad)):
            lines.append((name if i == 0 else "").ljust(pad) + line)
        lines += [" " * (pad + 2) + line
                  for line in wrap_display(f"({spec.source}) {spec.seed_section}".strip(), width - pad - 2)]
    return lines


def _bandit(args: argparse.Namespace) -> int:
    try:
        probs = [float(p) for p in args.probs.split(",")]
    except ValueError:
        raise ZooError(f"--probs must be comma-separated numbers, got {args.probs!r}") from None
    if args.seeds < 1:
        raise ZooError(f"--seeds must be a positive integer, got {args.seeds}")
    frame = bandit.regret_curves(probs, args.horizon, args.policy.split(","),
                                 seeds=range(args.seed, args.seed + args.seeds), backend=args.backend,
                                 refit=args.refit, epsilon=args.epsilon, **_key_values(args.option, "--option"))
    print(f"final cumulative regret after {args.horizon} rounds (probs {probs}):")
    print(format_table(bandit.final_regret(frame).reset_index()))
    if args.out:
        print("wrote", write_text(Path(args.out) / "bandit.csv", frame.to_csv(index=False)))
        print("wrote", bandit.plot_regret(frame, Path(args.out) / "regret.png"))
    return 0


def _fan_out(args: argparse.Namespace, options: dict[str, Any], hyper: dict | None, progress: bool) -> int:
    """``sbc`` and ``grid``: per-task files under --out, so an interrupted run resumes."""
    fan = {"executor": args.executor, "address": args.address, "progress": progress}
    if args.command == "sbc":
        if args.data:
            raise ZooError("sbc simulates its own data from the prior; --data does not apply")
        res = calibration.sbc(args.name, args.backend, args.simulations, args.draws, args.seed, hyper=hyper,
                              out=Path(args.out) / "tasks" if args.out else None, **fan, **options)
        print(format_table(res.tests, width=None if args.wide else WIDTH))
        print(f"{'passed' if res.passed else 'FAILED'}: every p-value must exceed {res.threshold:.3g}"
              + (f"; {res.note}" if res.note else ""))
        for f in res.save(args.out) if args.out else []:
            print("wrote", f)
        return 0 if res.passed else 1
    res = grids.grid(args.models.split(","), args.backends.split(","), args.seeds, hyper=hyper,
                     out=Path(args.out) / "tasks" if args.out else None, **fan, **options)
    print(format_table(res.table, ["model", *SHORT_COLUMNS], None if args.wide else WIDTH))
    for f in res.save(args.out) if args.out else []:
        print("wrote", f)
    return 0


def _model_entry(text: str) -> tuple[str, dict[str, Any]]:
    """``gaussian_mixture:K=3,alpha=2`` as (name, hyper)."""
    name, _, rest = text.partition(":")
    return name, _key_values([kv for kv in rest.split(",") if kv], f"hyperparameters of {name} in {text!r}")


def _compare_models(args: argparse.Namespace, options: dict[str, Any], progress: bool) -> int:
    cmp = model_comparison.compare_models([_model_entry(m) for m in args.models], backend=args.backend,
                                          data=_load_data(args.data), seed=args.seed, progress=progress, **options)
    table = cmp.table.drop(columns=["scale"], errors="ignore").reset_index(names="model entry")
    print(format_table(table, width=None if args.wide else WIDTH))
    if args.out:
        for f in cmp.save(args.out):
            print("wrote", f)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            print("\n".join(list_lines()))
            print("\n* the model's default back-end (python -m zoo run NAME); each model's second line: "
                  "where it comes from (catalogue, posteriordb, user) and its section of the notes")
            return 0
        if args.command == "bandit":
            return _bandit(args)
        options = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k) is not None}
        options.update(_key_values(args.option, "--option"))
        hyper = _key_values(args.hyper, "--hyper") or None
        progress = not args.no_progress and sys.stderr.isatty()  # tqdm's disable=None: bars on a terminal only
        if args.command in ("sbc", "grid"):
            return _fan_out(args, options, hyper, progress)
        if args.command == "compare-models":
            if hyper:
                raise ZooError("compare-models takes hyperparameters per model (gaussian_mixture:K=3), not --hyper")
            return _compare_models(args, options, progress)
        data = _load_data(args.data)
        if args.command == "run":
            res = api.run(args.name, args.backend, data=data, seed=args.seed, hyper=hyper,
                          progress=progress, **options)
            print(f"{args.name}, back-end {res.backend}: {res.seconds:.3f} s\n")
            print(res.summary().to_string())
            print_diagnostics(res.diagnostics, "diagnostics")
            if res.backend == "exact":
                problem, _ = api.prepare_problem(api.get_model(args.name), data, hyper)
                print_diagnostics(problem.exact().extra, "closed-form posterior")
            if args.out:
                print("wrote", res.save(Path(args.out) / f"{args.name}_{res.backend.replace(':', '_')}.nc"))
            return 0
        backends = args.backends.split(",") if args.backends else None
        cmp = api.compare(args.name, backends, data=data, seed=args.seed, hyper=hyper,
                          progress=progress, **options)
        print_comparison(cmp.table, args.wide)
        if args.out:
            for f in cmp.save(args.out):
                print("wrote", f)
        return 0
    except (ZooError, InferenceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

"""Command line: ``python -m zoo list | run | compare | sbc | grid | bandit``.

Examples::

    python -m zoo list
    python -m zoo run normal_gamma --backend nuts --seed 0 --out out/ng
    python -m zoo compare normal_gamma --backends exact,nuts,svi,cavi --out out/ng
    python -m zoo compare bayesian_linear_regression --hyper prior=laplace --num-steps 2000
    python -m zoo sbc normal_gamma --backend nuts --simulations 200 --out out/sbc --executor ray
    python -m zoo grid --models beta_bernoulli,poisson_gamma --backends exact,svi --seeds 3 --out out/grid
    python -m zoo bandit --probs 0.1,0.2,0.3 --horizon 2000 --policy thompson,ucb1 --seeds 5 --out out/b
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoo import api, bandit, calibration, grids
from zoo.core.errors import InferenceError, ZooError
from zoo.core.files import write_text

# Back-end options offered as flags; each is passed only when given, and `compare` gives it
# to every back-end that accepts it.
OPTION_FLAGS = {"num_samples": int, "num_warmup": int, "num_chains": int, "num_steps": int,
                "lr": float, "guide": str, "proposal": str}


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
    sub.add_parser("list", help="list the models: where each comes from, what kind it is")
    flags = argparse.ArgumentParser(add_help=False)  # what every inference command takes
    flags.add_argument("--hyper", action="append", default=[], metavar="KEY=VALUE",
                       help="hyperparameter, VALUE in JSON (repeatable)")
    flags.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other back-end option, VALUE in JSON (repeatable)")
    flags.add_argument("--out", help="folder for results")
    flags.add_argument("--no-progress", action="store_true", help="hide progress bars")
    for flag, kind in OPTION_FLAGS.items():
        flags.add_argument("--" + flag.replace("_", "-"), type=kind, dest=flag)
    fanout = argparse.ArgumentParser(add_help=False)  # sbc and grid: many independent tasks
    fanout.add_argument("--executor", default="local", choices=("local", "ray"),
                        help="run the tasks in this process or on Ray (pip install \"pyro-model-zoo[ray]\")")
    fanout.add_argument("--address", help="Ray cluster to join (default: start a local one)")
    common = argparse.ArgumentParser(add_help=False, parents=[flags])
    common.add_argument("name", help="model name (python -m zoo list)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--data", help=".npz or .json file of named arrays (default: simulated)")
    run = sub.add_parser("run", parents=[common], help="run one back-end")
    run.add_argument("--backend", default="nuts")
    compare = sub.add_parser("compare", parents=[common], help="compare back-ends against the exact posterior")
    compare.add_argument("--backends", help="comma-separated labels (default: all of the model's)")
    calib = sub.add_parser("sbc", parents=[common, fanout],
                           help="simulation-based calibration of a back-end (ranks of prior draws)")
    calib.add_argument("--backend", default="nuts")
    calib.add_argument("--simulations", type=int, default=100, help="number of simulations")
    calib.add_argument("--draws", type=int, default=99, help="thinned posterior draws each truth is ranked among")
    many = sub.add_parser("grid", parents=[flags, fanout], help="every model x back-end x seed, one long table")
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
    play.add_argument("--out", help="folder for bandit.csv and regret.png")
    return parser


def _print_table(table: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 4):
        print(table.to_string(index=False))


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
    _print_table(bandit.final_regret(frame).reset_index())
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
        _print_table(res.tests)
        print(f"{'passed' if res.passed else 'FAILED'}: every p-value must exceed {res.threshold:.3g}"
              + (f"; {res.note}" if res.note else ""))
        for f in res.save(args.out) if args.out else []:
            print("wrote", f)
        return 0 if res.passed else 1
    res = grids.grid(args.models.split(","), args.backends.split(","), args.seeds, hyper=hyper,
                     out=Path(args.out) / "tasks" if args.out else None, **fan, **options)
    _print_table(res.table)
    for f in res.save(args.out) if args.out else []:
        print("wrote", f)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            for row in api.catalogue().itertuples(index=False):  # registers no deferred model
                print(f"{row.name:28s} {row.source:12s} {row.kind:22s} {row.description[:70]}")
            return 0
        if args.command == "bandit":
            return _bandit(args)
        options = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k) is not None}
        options.update(_key_values(args.option, "--option"))
        hyper = _key_values(args.hyper, "--hyper") or None
        progress = not args.no_progress
        if args.command in ("sbc", "grid"):
            return _fan_out(args, options, hyper, progress)
        data = _load_data(args.data)
        if args.command == "run":
            res = api.run(args.name, args.backend, data=data, seed=args.seed, hyper=hyper,
                          progress=progress, **options)
            print(res.summary().to_string())
            print(f"seconds: {res.seconds:.3f}")
            if args.out:
                print("wrote", res.save(Path(args.out) / f"{args.name}_{args.backend}.nc"))
            return 0
        backends = args.backends.split(",") if args.backends else None
        cmp = api.compare(args.name, backends, data=data, seed=args.seed, hyper=hyper,
                          progress=progress, **options)
        _print_table(cmp.table)
        if args.out:
            for f in cmp.save(args.out):
                print("wrote", f)
        return 0
    except (ZooError, InferenceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

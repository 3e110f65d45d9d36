"""The model gallery's numbers and figures: each model's default comparison at modest settings.

For every model of the registry this runs ``zoo.compare(name)`` on the model's default data
(``zoo.simulate(name, seed=0)``) with every back-end the model compares by default, at the
settings in ``SETTINGS`` (modest, so the whole gallery builds in minutes on two cores), and
writes into ``OUT/<model>/``:

- ``table.csv``: the comparison table, every column;
- ``scalars.csv``: one row per back-end and latent scalar;
- ``run.json``: the settings, the wall time, the versions and the figures' file names;
- ``forest.png``, ``density.png``: every back-end over the exact posterior (``Comparison.plot``).

The docs (``docs/conf.py``) turn these files and the registry into one page per model; no
number is typed by hand. A model whose files exist is skipped unless ``--force``.

Examples::

    python docs/gallery.py                      # every model, into docs/gallery/files
    python docs/gallery.py --models normal_gamma,vae --force
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script, not the library: no display needed

import arviz  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import zoo  # noqa: E402
from zoo import registry  # noqa: E402
from zoo.core.files import write_text  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "gallery" / "files"
# Given to every back-end that accepts them: 4 chains of 300 draws after 300 warm-up
# iterations for the samplers, SVI capped at 2000 steps. The deep models' own estimators
# train for `num_steps` too.
SETTINGS = {"num_samples": 300, "num_warmup": 300, "num_steps": 2000}
MAX_HEIGHT = 4000  # pixels: a figure taller than this does not fit a page


def run_model(name: str, out: Path) -> dict:
    """Run ``name``'s default comparison and write its files into ``out``; returns run.json."""
    start = time.perf_counter()
    for stale in out.glob("*.png"):  # a plot that fails halfway leaves no figure of an older run
        stale.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = registry.get_model(name)
        run_by_default = [b for k, b in registry.backends_for(spec).items() if k not in spec.backends.skip_by_default]
        accepted = {k: v for k, v in SETTINGS.items() if any(k in b.options for b in run_by_default)}
        cmp = zoo.compare(name, seed=0, progress=False, **accepted)
        try:
            figures, plot_error = [p.name for p in cmp.plot(out)], None
        except Exception as e:  # noqa: BLE001 - the page says the plot failed and why
            figures, plot_error = [], f"{type(e).__name__}: {e}"
            for half in out.glob("*.png"):
                half.unlink()
    figures, left_out = fit_page(out, figures)
    write_text(out / "table.csv", cmp.table.to_csv(index=False))
    write_text(out / "scalars.csv", cmp.scalars.to_csv(index=False))
    meta = {"model": name, "settings": accepted, "seed": 0, "wall_seconds": round(time.perf_counter() - start, 1),
            "figures": figures, "figures_left_out": left_out, "plot_error": plot_error, "python": platform.python_version(), "machine": platform.platform(),
            "versions": {"pyro": pyro.__version__, "torch": torch.__version__, "arviz": arviz.__version__}}
    write_text(out / "run.json", json.dumps(meta, indent=1))
    return meta


def fit_page(out: Path, figures: list[str]) -> tuple[list[str], dict[str, str]]:
    """The figures a page can show, and those it cannot (taller than ``MAX_HEIGHT`` pixels:
    one panel per latent scalar of a model with hundreds of them), which are deleted and
    named with their size instead."""
    keep, left_out = [], {}
    for name in figures:
        with Image.open(out / name) as im:
            width, height = im.size
        if height > MAX_HEIGHT:
            (out / name).unlink()
            left_out[name] = f"{width} x {height} px"
        else:
            keep.append(name)
    return keep, left_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="comma-separated model names (default: every registered model)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder of the files (default {OUT})")
    parser.add_argument("--force", action="store_true", help="run models whose files already exist")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else zoo.list_models()
    total = time.perf_counter()
    for name in names:
        out = args.out / name
        if (out / "run.json").exists() and not args.force:
            print(f"{name}: kept (files exist; --force to re-run)", flush=True)
            continue
        meta = run_model(name, out)
        print(f"{name}: {meta['wall_seconds']} s", flush=True)
    print(f"gallery: {time.perf_counter() - total:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the documentation: ``python docs/build.py`` writes the HTML into ``docs/_build/html``.

Warnings are errors (``sphinx-build -W --keep-going``). The notebooks are not executed here:
the pages show the outputs stored in ``notebooks/*.ipynb`` (pytest ``--nbmake --overwrite``
refreshes them, as CI does before it builds the docs). The gallery's comparisons come from
the files ``docs/gallery.py`` wrote; ``--gallery`` runs it first for the models that have none
(``--gallery --force``: for every model).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", action="store_true", help="run docs/gallery.py first")
    parser.add_argument("--force", action="store_true", help="with --gallery: re-run every model")
    parser.add_argument("--out", type=Path, default=HERE / "_build" / "html", help="HTML folder")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.gallery:
        cmd = [sys.executable, str(HERE / "gallery.py")] + (["--force"] if args.force else [])
        if subprocess.run(cmd).returncode:
            return 1
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q", str(HERE), str(args.out)]
    code = subprocess.run(cmd).returncode
    print(f"docs: {'built' if code == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s -> {args.out / 'index.html'}")
    return code


if __name__ == "__main__":
    sys.exit(main())

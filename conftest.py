"""pytest set-up shared by tests/ and notebooks/.

One BLAS/OpenMP thread per pytest-xdist worker. With ``-n 2`` on 2 cores, every worker's
OpenBLAS and OpenMP pools default to one thread per core, so four busy threads share two
cores and spin-wait on each other: a 3-parameter L-BFGS fit (``nce_fit``) took 96 ms against
7 ms on one thread (measured under the suite's load). The limit is set in the environment, so
the notebook kernels nbmake starts inherit it, and through threadpoolctl for the libraries this
process has already loaded. What the tests check does not change; a plain ``pytest`` run (no
``-n``) keeps the libraries' defaults.

Long items run first: the notebooks (30-110 s each at reader settings), then the tests marked
``slow``, then the rest (a stable sort; the order within each tier is unchanged), so that the
last tests to run are short. With ``--dist worksteal`` (the README's command) a worker that
runs out of tests takes half of the other's queue; under xdist's default ``load`` scheduling
the first quarter of the collection is dealt out in advance, and a worker dealt more of the
slow tests ran them alone for minutes at the end. This changes when a test runs, not what it
checks.
"""

from __future__ import annotations

import os

import pytest

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))

if _WORKERS > 1:
    _THREADS = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = _THREADS

    import threadpoolctl
    import torch

    threadpoolctl.threadpool_limits(int(_THREADS))
    torch.set_num_threads(int(_THREADS))


def _tier(item: pytest.Item) -> int:
    """0 for a notebook, 1 for a test marked slow, 2 for the rest."""
    if item.path.suffix == ".ipynb":
        return 0
    return 1 if item.get_closest_marker("slow") else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: notebooks, then ``slow`` tests, then the rest (see the module docstring)."""
    items.sort(key=_tier)

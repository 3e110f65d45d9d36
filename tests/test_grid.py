"""Grids: one long table, resumable per-task files, and the same table on a local 2-CPU Ray."""
from __future__ import annotations

import sys

import pandas as pd
import pytest

import zoo
from zoo import tasks as task_module
from zoo.grids import TIMING_COLUMNS, grid

MODELS = ["beta_bernoulli", "poisson_gamma"]
BACKENDS = ["exact", "svi"]
OPTIONS = {"svi": {"num_steps": 20, "num_samples": 100, "num_chains": 2, "num_elbo_particles": 20}}


@pytest.fixture(scope="module")
def local_table():
    return grid(MODELS, BACKENDS, seeds=[0, 1], options=OPTIONS, progress=False).table


def test_grid_is_one_long_table(local_table):
    t = local_table
    assert list(t[["model", "backend", "seed"]].itertuples(index=False, name=None)) == [
        (m, b, s) for m in MODELS for b in BACKENDS for s in (0, 1)]
    exact = t[t["backend"] == "exact"]
    # 4000 exact draws scored against 20000 other exact draws: |z| ~ 0.02, sd ratio ~ 1 +- 0.01
    assert (exact["max_abs_z"] < 0.1).all() and exact["sd_ratio_min"].between(0.95, 1.05).all()
    # each row is what compare gives on zoo.simulate(model, seed) data
    data, _ = zoo.simulate("poisson_gamma", seed=1)
    cmp = zoo.compare("poisson_gamma", ["exact"], data=data, seed=1)
    row = t[(t["model"] == "poisson_gamma") & (t["backend"] == "exact") & (t["seed"] == 1)].iloc[0]
    assert row["max_abs_z"] == pytest.approx(cmp.table["max_abs_z"].iloc[0])
    assert row["log_evidence"] == pytest.approx(cmp.table["log_evidence"].iloc[0])


def test_grid_resumes_from_its_files(tmp_path, monkeypatch, local_table):
    out = tmp_path / "tasks"
    first = grid(["beta_bernoulli"], ["exact"], seeds=3, out=out, progress=False).table
    files = sorted((out / "beta_bernoulli" / "exact").glob("*.json"))
    assert [f.name for f in files] == ["0.json", "1.json", "2.json"]
    files[1].unlink()  # as if interrupted before task 1 finished
    calls = []
    real = task_module.run_task
    monkeypatch.setattr(task_module, "run_task", lambda task, work: calls.append(task.seed) or real(task, work))
    again = grid(["beta_bernoulli"], ["exact"], seeds=3, out=out, progress=False).table
    assert calls == [1]
    pd.testing.assert_frame_equal(again.drop(columns=list(TIMING_COLUMNS)),
                                  first.drop(columns=list(TIMING_COLUMNS)))
    written = zoo.grid(["beta_bernoulli"], ["exact"], seeds=3, out=out, progress=False).save(tmp_path)
    assert [p.name for p in written] == ["grid.csv", "grid.md"]


@pytest.mark.parametrize("kwargs,match", [
    ({"options": {"nuts": {"num_samples": 10}}}, "not among the back-ends"),
    ({"options": {"svi": {"num_leapfrog": 10}}}, "no option 'num_leapfrog'"),
    ({"num_leapfrog": 10}, "accepted by none"),
    ({"seeds": [-1]}, "seed"),
    ({"executor": "threads"}, "executor"),
])
def test_bad_inputs_raise(kwargs, match):
    with pytest.raises(zoo.ZooError, match=match):
        grid(["beta_bernoulli"], ["exact", "svi"], **{"seeds": 1, **kwargs})


def test_ray_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(zoo.ZooError, match=r'pip install "pyro-model-zoo\[ray\]"'):
        grid(["beta_bernoulli"], ["exact"], seeds=1, executor="ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        task_module.start_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def test_ray_gives_the_local_table(ray_cluster, local_table, tmp_path):
    on_ray = grid(MODELS, BACKENDS, seeds=[0, 1], options=OPTIONS, executor="ray", out=tmp_path,
                  progress=False).table
    assert ray_cluster.cluster_resources()["CPU"] == 2
    assert on_ray.loc[on_ray["backend"] == "svi", "elbo"].notna().all()
    pd.testing.assert_frame_equal(on_ray.drop(columns=list(TIMING_COLUMNS)),
                                  local_table.drop(columns=list(TIMING_COLUMNS)))
    assert len(list(tmp_path.rglob("*.json"))) == 8

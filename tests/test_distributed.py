"""Data-parallel SVI: two torchrun processes (gloo) reproduce one process, which is Pyro's SVI."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo.distributed import fit_data_parallel

STEPS = {"num_steps": 60, "num_samples": 50}


def test_one_process_is_pyros_svi():
    """The hand-written step loop (needed to average gradients) is SVI.step exactly."""
    ours = fit_data_parallel("logistic_regression", seed=2, num_chains=1, **STEPS)
    pyros = zoo.run("logistic_regression", "svi", seed=2, num_chains=1, lr_decay=0.02, lr=0.05,
                    converge=False, **STEPS)
    np.testing.assert_allclose(ours.diagnostics["elbo_trace"], pyros.diagnostics["elbo_trace"], rtol=1e-10)


def test_two_processes_give_the_one_process_answer(tmp_path):
    out = tmp_path / "two.nc"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "zoo.distributed", "logistic_regression", "--seed", "1", "--num-steps", str(STEPS["num_steps"]),
           "--num-samples", str(STEPS["num_samples"]), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = zoo.load(out)
    one = fit_data_parallel("logistic_regression", seed=1, **STEPS)
    assert two.diagnostics["processes"] == 2
    np.testing.assert_allclose(two.diagnostics["elbo_trace"], one.diagnostics["elbo_trace"], rtol=1e-9)
    np.testing.assert_allclose(two.draws("w"), one.draws("w"), atol=1e-9)


def test_models_with_local_latents_are_refused():
    with pytest.raises(zoo.ZooError, match="every latent site global"):
        fit_data_parallel("gaussian_mixture", num_steps=2)

"""Interrupted runs: a SIGINT leaves no half-written file, and the re-run resumes where it was.

Each test starts the command line in a subprocess, interrupts it once its first checkpoint is
on disk, then resumes in this process and compares with a run that was never interrupted.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import zoo

MODEL = "normal_known_variance"


def _interrupt_when(cmd: list[str], ready, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``cmd``, send SIGINT once ``ready()`` is true, and wait for it to exit."""
    # A shell that starts a job in the background (``cmd &``, as some CI runners do) makes
    # it ignore SIGINT, and Python then installs no KeyboardInterrupt handler: restore the
    # default disposition in the child, as a terminal's Ctrl-C would find it.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _no_temp_files(directory: Path) -> None:
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"half-written files left behind: {leftovers}"


def test_svi_resumes_bit_identically_after_sigint(tmp_path):
    ckpt = tmp_path / "svi.pt"
    opts = {"num_steps": 3000, "converge": False, "checkpoint_every": 50, "num_samples": 20,
            "num_chains": 2, "num_elbo_particles": 50}
    cmd = [sys.executable, "-m", "zoo", "run", MODEL, "--backend", "svi", "--no-progress",
           "--num-steps", "3000", "--num-samples", "20", "--option", f"checkpoint={json.dumps(str(ckpt))}",
           "--option", "converge=false", "--option", "checkpoint_every=50", "--option", "num_chains=2",
           "--option", "num_elbo_particles=50"]
    proc = _interrupt_when(cmd, ckpt.exists)
    assert proc.returncode != 0, "the run was meant to be interrupted before it finished"
    _no_temp_files(tmp_path)
    state = torch.load(ckpt, weights_only=True)  # whole, and loadable without pickled code
    assert 50 <= len(state["trace"]) < 3000 and len(state["trace"]) % 50 == 0
    resumed = zoo.run(MODEL, "svi", seed=0, checkpoint=str(ckpt), **opts)
    fresh = zoo.run(MODEL, "svi", seed=0, **opts)
    assert resumed.diagnostics["elbo_trace"] == fresh.diagnostics["elbo_trace"]
    np.testing.assert_array_equal(resumed.draws("mu"), fresh.draws("mu"))


def test_mcmc_keeps_finished_chains_after_sigint(tmp_path):
    ckpt = tmp_path / "chains"
    opts = {"num_samples": 100, "num_warmup": 100, "num_chains": 4}
    out = tmp_path / "result.nc"
    cmd = [sys.executable, "-m", "zoo", "run", MODEL, "--backend", "nuts", "--no-progress",
           "--num-samples", "100", "--num-warmup", "100", "--num-chains", "4",
           "--option", f"checkpoint={json.dumps(str(ckpt))}", "--out", str(out)]
    _interrupt_when(cmd, lambda: (ckpt / "chain_0.npz").exists())
    _no_temp_files(ckpt)
    finished = sorted(p.name for p in ckpt.glob("chain_*.npz"))
    assert finished and len(finished) < 4, finished
    resumed = zoo.run(MODEL, "nuts", seed=0, checkpoint=str(ckpt), **opts)
    fresh = zoo.run(MODEL, "nuts", seed=0, sampler="pyro", **opts)  # a checkpoint runs Pyro's kernel
    np.testing.assert_array_equal(resumed.draws("mu"), fresh.draws("mu"))


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = tmp_path / "chains"
    zoo.run(MODEL, "nuts", seed=0, num_samples=10, num_warmup=10, num_chains=1, checkpoint=str(ckpt))
    try:
        zoo.run(MODEL, "nuts", seed=1, num_samples=10, num_warmup=10, num_chains=1, checkpoint=str(ckpt))
    except zoo.ZooError as e:
        assert "another run" in str(e)
    else:
        raise AssertionError("a checkpoint made with another seed was reused")

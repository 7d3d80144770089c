"""Beyond one machine (issue 16), the parts that run on this machine: a sweep through Hydra's submitit
launcher (``hydra/launcher=submitit_local``: every job a real subprocess started by submitit), and
SLURM's pre-timeout signal with a stand-in ``scontrol``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, compose_cfg, make_imagefolder
from fgssl.errors import FgsslError
from fgssl.lifecycle import check_devices
from test_resume import (
    KILL_AT_BATCH,
    KILLER,
    _env,
    _overrides,
    _train,
    assert_same_csv,
    assert_same_end,
    reference,  # noqa: F401 - the module-scoped reference run, as a fixture here
)

ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.mark.slow  # two training jobs in parallel subprocesses: ~2 min on a shared 2-core CPU
def test_submitit_local_two_job_sweep_and_results(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=6)
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=submitit_local",
                        "method=simsiam", "data=imagefolder", f"data.root={data}", "debug=smoke", "data.batch_size=8",
                        "trainer.limit_train_batches=1", "eval.knn_every_n_epochs=0", "eval.max_images=24",
                        "eval.linear_max_iter=20", "trainer.enable_progress_bar=false", "seed=0,1",
                        f"hydra.sweep.dir={sweep}"], cwd=str(ROOT), env=ENV, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in r.stdout + r.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1"]
    assert all((j / "metrics.json").is_file() for j in jobs), "each job has its own metrics.json"
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2, "each job ran as its own submitit job"
    assert f"sweep {sweep}: 2 of 2 job(s) finished, 0 failed" in r.stdout

    res = subprocess.run([sys.executable, "-m", "fgssl.results", str(sweep), "--no-write"], cwd=str(ROOT), env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "2 job(s) with metrics in 1 configuration(s)" in res.stdout and "Missing or failed" not in res.stdout


def test_num_nodes_zero_is_one_line():
    with pytest.raises(FgsslError, match=r"trainer.num_nodes=0 must be >= 1"):
        check_devices(compose_cfg(["trainer.num_nodes=0"]))


def test_results_of_a_folder_without_jobs_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fgssl.results", str(tmp_path)], cwd=str(ROOT), env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"fgssl.results: no job directory (with .hydra/overrides.yaml or metrics.json) under {tmp_path}"]


@pytest.mark.slow  # two training runs (~2 min on a shared 2-core CPU) plus the reference run
def test_slurm_pre_timeout_signal_checkpoints_requeues_and_resumes(reference, tmp_path):  # noqa: F811
    """SLURM's pre-timeout signal (``--signal=USR1@90``) mid-epoch: the step finishes, last.ckpt is written
    at it, the job asks to be requeued (a stand-in ``scontrol`` on PATH records the call) and exits; the
    same command (what the requeued job runs) then ends equal to an uninterrupted run."""
    data, ref = reference("device")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    scontrol.chmod(0o755)
    calls = tmp_path / "scontrol.calls"
    run = tmp_path / "job"
    env = _env(KILL_SIGNAL="SIGUSR1", PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
               SCONTROL_LOG=str(calls))
    r = _train(_overrides(data, run), env, script=KILLER)
    assert r.returncode == 128 + 10, r.stderr[-4000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1] == f"stopped by SIGUSR1 at step {KILL_AT_BATCH}; requeued SLURM job 4242; it resumes from " \
                        "last.ckpt", lines[-5:]
    assert calls.read_text() == "requeue 4242\n"
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == KILL_AT_BATCH

    resumed = _train(_overrides(data, run), _env())
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_end(ref, run)
    assert_same_csv(ref, run)

"""Two CPU processes (gloo) through the real entry point, for both methods."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from fgssl.eval.suite import METRIC_KEYS

SMOKE_BATCH = 16  # conf/debug/smoke.yaml


def _train(tmp_path, run, *overrides):
    cmd = [sys.executable, str(ROOT / "train.py"), "trainer.precision=32-true", "debug=smoke",
           f"hydra.run.dir={run}", "trainer.enable_progress_bar=false", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # 2 processes on 2 cores
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=480, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]


def assert_same_final_weights(ref, run) -> dict:
    """The two runs' last.ckpt state dicts agree: floats within DDP's reduction-order noise, integers exactly
    (backbone, heads, BN running statistics, momentum encoder, queue and its pointer)."""
    a = torch.load(ref / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-3, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), k
    return b  # the run's state dict, for further checks


def _steps(run):
    import csv

    with open(run / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if r.get("lr/backbone")], [float(r["val/knn_top1"]) for r in rows if r.get("val/knn_top1")]


@pytest.mark.parametrize("pipeline", ["device", pytest.param("workers", marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", ["mocov2", "simsiam"])
def test_ddp_two_cpu_processes_equal_one_process(method, pipeline, tmp_path):
    """2 gloo processes x batch 8 against 1 process x batch 16 (same seed, same global batches):
    the losses, the weights after the steps (so the gradients), BatchNorm statistics (GlobalBatchNorm),
    MoCo's queue and the kNN monitor on all-gathered features agree. Both input pipelines."""
    run = tmp_path / "run"
    _train(tmp_path, run, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"method={method}",
           f"data.batch_size={SMOKE_BATCH // 2}", f"data.pipeline={pipeline}")
    ref = tmp_path / "ref"
    _train(tmp_path, ref, "trainer=cpu", f"method={method}", f"data.batch_size={SMOKE_BATCH}",
           f"data.pipeline={pipeline}")

    b = assert_same_final_weights(ref, run)
    steps_a, knn_a = _steps(ref)
    steps_b, knn_b = _steps(run)
    assert len(steps_a) == len(steps_b) == 2
    for i, (ra, rb) in enumerate(zip(steps_a, steps_b)):  # DDP logs global-batch means (sync_dist)
        # step 1: same weights, same (bitwise) inputs. Step 2 follows a step whose gradients were all-reduced
        # in another order: SimSiam's loss, a negative cosine near 0 at init, then differs by up to ~3e-6
        # (measured on the device pipeline's inputs; 0.1 % of the loss, the weights agree to 1e-4)
        for key in ("train/loss", "train/L_C", "lr/backbone"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-4, abs=1e-6 if i == 0 else 1e-5), key
    assert knn_b == pytest.approx(knn_a, abs=1e-6), "kNN on the all-gathered features"
    # the lr is scaled by the global batch (2 processes x 8); logged after the first of 2 cosine steps: x 0.5
    lr = {"mocov2": 0.06, "simsiam": 0.05}[method]
    assert float(steps_b[0]["lr/backbone"]) == pytest.approx(0.5 * lr * SMOKE_BATCH / 256)
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(0.0 <= metrics[k] <= 100.0 for k in METRIC_KEYS)
    assert (run / "train_ddp_process_1.log").exists(), "the second process ran in the same run directory"
    if method == "mocov2":
        # 2 steps x 2 ranks x 8 keys, all-gathered before enqueueing (without: the pointer would stand at 16)
        assert int(b["queue_ptr"]) == 2 * SMOKE_BATCH
        q = b["queue"]
        assert torch.allclose(q[: 2 * SMOKE_BATCH].norm(dim=1), torch.ones(2 * SMOKE_BATCH), atol=1e-5)
        assert not torch.allclose(q[:8], q[8:16]), "the two ranks enqueued different keys"


def test_multirun_with_ddp_runs_jobs_one_after_another(tmp_path):
    """`train.py -m ... trainer=ddp`: each job starts its own 2 processes, in its own directory and
    its own wandb run; the worker processes do not start sweeps of their own."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "seed=0,1", "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.precision=32-true", "debug=smoke", "logger=wandb", "logger.mode=offline",
           "trainer.enable_progress_bar=false", "eval.knn_every_n_epochs=0", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name.split("_", 1)[0] for j in jobs] == ["0", "1"], jobs
    ids = set()
    for seed, job in enumerate(jobs):
        assert (job / "metrics.json").is_file()
        assert (job / "train_ddp_process_1.log").is_file(), "the job ran with 2 processes"
        assert f"seed: {seed}" in (job / "checkpoints" / "config.yaml").read_text()
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        ids.add(runs[0].name.rsplit("-", 1)[1])
    assert len(ids) == 2, "one wandb run per job"
    assert not list(tmp_path.glob("multirun")) and not list(sweep.glob("*/multirun")), "no nested sweeps"

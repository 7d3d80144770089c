"""torchrun (issue 16): ``torchrun --nnodes=N --nproc-per-node=G train.py ...`` as the alternative to SLURM.
Every process runs the entry point; fgssl takes the run's shape from torchrun's variables
(:mod:`fgssl.cluster`), and all ranks use global rank 0's run directory, lock and checkpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from fgssl.cluster import shared_run_dir
from test_ddp import SMOKE_BATCH, _steps, assert_same_final_weights

ENV = dict(os.environ, OMP_NUM_THREADS="1")
ARGS = ["trainer.precision=32-true", "debug=smoke", "trainer.enable_progress_bar=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_rank_uses_rank_zeros_run_directory(tmp_path, monkeypatch):
    """Each rank composes its own Hydra run dir (a time-stamped one differs between ranks); through the
    store torchrun already runs at MASTER_ADDR:MASTER_PORT, the other ranks take rank 0's."""
    port = _free_port()
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=30))
    for k, v in {"TORCHELASTIC_RUN_ID": "job1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RANK", "0")
    assert shared_run_dir(tmp_path / "12-00-00") == tmp_path / "12-00-00"
    monkeypatch.setenv("RANK", "1")
    assert shared_run_dir(tmp_path / "12-00-01") == tmp_path / "12-00-00"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert shared_run_dir(tmp_path / "12-00-01") == tmp_path / "12-00-01", "not under torchrun: its own"
    del store


def _torchrun(cwd: Path, run: Path, *args: str, nnodes: int = 1, nproc: int = 2, node_rank=None, port=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}"]
    if node_rank is not None:
        cmd += [f"--node-rank={node_rank}", "--master-addr=127.0.0.1", f"--master-port={port}"]
    else:
        cmd += ["--master-addr=127.0.0.1", f"--master-port={_free_port()}"]
    cmd += [str(ROOT / "train.py"), *ARGS, f"hydra.run.dir={run}", *args]
    return subprocess.Popen(cmd, cwd=str(cwd), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(p, timeout=600):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:] + err[-5000:]
    return out, err


@pytest.mark.slow  # two torchrun runs of 2 processes (~1 min on a shared 2-core CPU)
def test_torchrun_one_node_two_processes_finishes_and_resumes(tmp_path):
    run = tmp_path / "run"
    out, _ = _wait(_torchrun(tmp_path, run, "method=simsiam", "data.batch_size=8"))
    assert ("fgssl: torchrun environment: 1 node(s) x 2 process(es); trainer.num_nodes=1 trainer.devices=2 "
            "trainer.strategy=ddp") in out
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("metrics.json")] == [Path("run/metrics.json")]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2
    out, _ = _wait(_torchrun(tmp_path, run, "method=simsiam", "data.batch_size=8"))  # the same command again
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in out
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2, "resumed at the end: no extra step"


@pytest.mark.slow  # 2 "nodes" of 1 process + 1 process (~1.5 min on a shared 2-core CPU)
def test_two_nodes_on_localhost_equal_one_process(tmp_path):
    """Two torchrun agents on 127.0.0.1 as node ranks 0 and 1 (one process each, gloo) against one
    process with the same global batch (2 x 8 = 16): losses, kNN, final weights and MoCo's queue agree,
    as in tests/test_ddp.py; the run's shape comes from torchrun, not from trainer.* overrides."""
    run, port = tmp_path / "run", _free_port()
    args = ("trainer=ddp", "trainer.accelerator=cpu", "method=mocov2", f"data.batch_size={SMOKE_BATCH // 2}")
    nodes = [_torchrun(tmp_path, run, *args, nnodes=2, nproc=1, node_rank=i, port=port) for i in (0, 1)]
    out0, _ = _wait(nodes[0])
    out1, _ = _wait(nodes[1])
    assert ("fgssl: torchrun environment: 2 node(s) x 1 process(es); trainer.num_nodes=2 trainer.devices=1 "
            "trainer.strategy=ddp (was num_nodes=1, devices=2, strategy=ddp)") in out0
    assert "metrics written" in out0 and "metrics written" not in out1, "rank 0 evaluates and writes"
    ref = tmp_path / "ref"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *ARGS, f"hydra.run.dir={ref}", "trainer=cpu",
                        "method=mocov2", f"data.batch_size={SMOKE_BATCH}"], cwd=str(tmp_path), env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]

    b = assert_same_final_weights(ref, run)  # GlobalBatchNorm statistics included
    steps_a, knn_a = _steps(ref)
    steps_b, knn_b = _steps(run)
    assert len(steps_a) == len(steps_b) == 2
    for i, (ra, rb) in enumerate(zip(steps_a, steps_b)):
        for key in ("train/loss", "train/L_C", "lr/backbone"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-4, abs=1e-6 if i == 0 else 1e-5), key
    assert knn_b == pytest.approx(knn_a, abs=1e-6), "kNN on the all-gathered features"
    assert int(b["queue_ptr"]) == 2 * SMOKE_BATCH, "2 steps x 2 nodes x 8 keys, all-gathered"
    assert not torch.allclose(b["queue"][:8], b["queue"][8:16]), "the two nodes enqueued different keys"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("metrics.json")) == [
        Path("ref/metrics.json"), Path("run/metrics.json")]

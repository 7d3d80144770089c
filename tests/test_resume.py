"""Auto-resume (issue 7): a run killed with SIGKILL in the middle of an epoch and started again with
the same command ends where an uninterrupted run ends; a changed config starts fresh; wandb continues
the same run id."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fgssl.run
from conftest import ROOT, compose_cfg, make_imagefolder
from fgssl.errors import FgsslError
from fixtures import one_torch_thread

# 48 images, batch 8: 6 steps per epoch, 2 epochs; a checkpoint every 4 training steps (SYN's decoder
# has its own Adam optimizer, so Lightning's global step counts 2 per batch; ckpt_every_n_steps does not)
KILL_AT_BATCH = 9  # the 3rd batch of epoch 2: the last checkpoint on disk is after batch 8
TOLERANCE = dict(atol=1e-5, rtol=1e-4)  # weights; CPU kernels are deterministic at 1 thread

KILLER = """
import os, runpy, signal, sys
import pytorch_lightning as pl
import fgssl.run as run

kill_at = int(os.environ["KILL_AT_BATCH"])
sig = getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL"))
build = run.build_trainer


class Kill(pl.Callback):
    sent = False

    def on_train_batch_end(self, trainer, *args):
        if os.environ.get("KILL_RANK", str(trainer.global_rank)) != str(trainer.global_rank):
            return
        if trainer.fit_loop.total_batch_idx + 1 >= kill_at and not self.sent:
            self.sent = True
            print(f"sending {sig.name} at batch {kill_at}", flush=True)
            if os.environ.get("KILL_CHILDREN"):  # DDP: only the worker processes Lightning started (rank >= 1)
                for proc in trainer.strategy.launcher.procs:
                    proc.send_signal(sig)
            elif os.environ.get("KILL_GROUP"):  # the process group, as `timeout`, SLURM and Ctrl-C do
                os.killpg(os.getpgid(0), sig)
            else:
                os.kill(os.getpid(), sig)


def build_trainer(*a, **k):
    trainer = build(*a, **k)
    trainer.callbacks.insert(0, Kill())  # Lightning runs checkpointing callbacks last: this one first
    return trainer


run.build_trainer = build_trainer
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(os.path.join(os.environ["FGSSL_REPO"], "train.py"), run_name="__main__")
"""


def _overrides(data: Path, run: Path, pipeline: str = "device", workers: int = 0):
    return ["method=mocov2", "data=imagefolder", f"data.root={data}", f"data.pipeline={pipeline}",
            "data.image_size=32", "data.batch_size=8", f"data.num_workers={workers}", "trainer.max_epochs=2",
            "trainer.ckpt_every_n_steps=4",
            "synthesis=syn", "synthesis.warmup_epochs=0", "synthesis.ramp_epochs=1",
            "eval.max_images=24", "eval.knn_every_n_epochs=1", "eval.linear_max_iter=20",
            "logger=csv", "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"]


def _train(args, env, script=None):
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, str(ROOT / "train.py"), *args]
    # a session of its own: a signal sent to the process group (KILL_GROUP) does not reach pytest
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=str(ROOT),
                          start_new_session=True)


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT_BATCH": str(KILL_AT_BATCH), "FGSSL_REPO": str(ROOT),
            **extra}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference(pipeline)``: the uninterrupted run every interrupted one is compared with, made once
    per input pipeline: (data dir, run dir)."""
    base = tmp_path_factory.mktemp("resume")
    data = make_imagefolder(base / "data", classes=3, per_class=16)
    made = {}

    def get(pipeline: str = "device"):
        if pipeline not in made:
            ref = _train(_overrides(data, base / f"ref-{pipeline}", pipeline), _env())
            assert ref.returncode == 0, ref.stderr[-4000:]
            assert f"fgssl: data pipeline {pipeline}" in ref.stdout
            made[pipeline] = (data, base / f"ref-{pipeline}")
        return made[pipeline]

    return get


def csv_rows(run: Path):
    """The rows of ``run/csv/metrics.csv`` as (step, frozenset of the logged keys) plus the values."""
    import csv

    with open(run / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in r.items() if v not in ("", None)} for r in rows]


def assert_same_csv(ref: Path, run: Path):
    """Every row of the uninterrupted run's CSV log is in ``run``'s exactly once (same step, keys and
    values to 1e-4), and there is no other row: resume appends, without duplicates or gaps."""
    a, b = csv_rows(ref), csv_rows(run)

    def key(r):
        return (int(r["step"]), tuple(sorted(k for k in r if k != "step")))

    assert sorted(map(key, a)) == sorted(map(key, b)), (a, b)
    by_key = {key(r): r for r in a}
    for r in b:
        for k, v in r.items():
            if k.endswith("_seconds"):
                continue  # wall-clock times
            assert float(v) == pytest.approx(float(by_key[key(r)][k]), rel=1e-4, abs=1e-5), (key(r), k)
    assert any("val/knn_top1" in r for r in b), "the epoch-end kNN rows"
    assert any("test/retrieval_map" in r for r in b), "the final test metrics reach the CSV log"


def assert_same_end(ref: Path, run: Path):
    a = torch.load(ref / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 24
    assert json.loads((run / "metrics.json").read_text())["steps"] == 12  # training steps, not optimizer steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, va in a["state_dict"].items():  # backbone, heads, momentum encoder, queue, SYN statistics
        vb = b["state_dict"][k]
        if va.is_floating_point():
            torch.testing.assert_close(vb, va, **TOLERANCE, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(va, vb), k
    assert any("queue" in k for k in a["state_dict"]) and any(k.startswith("synthesis") or ".synth" in k or
                                                              "stats" in k for k in a["state_dict"])
    ma = json.loads((ref / "metrics.json").read_text())
    mb = json.loads((run / "metrics.json").read_text())
    for k in ("test/retrieval_map", "test/retrieval_rank1", "test/linear_top1", "test/knn_top1"):
        assert mb[k] == pytest.approx(ma[k], abs=1e-3), k
    assert not list(run.rglob("*.tmp")), "no temporary file is left behind"


@pytest.mark.parametrize("pipeline", ["device", pytest.param("workers", marks=pytest.mark.slow)])
def test_kill_mid_epoch_then_resume_matches_uninterrupted_run(pipeline, reference, tmp_path):
    """Both input pipelines: the device pipeline's views come from the same per-image seeds."""
    data, ref = reference(pipeline)
    run = tmp_path / "killed"
    killed = _train(_overrides(data, run, pipeline), _env(), script=KILLER)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-4000:])
    assert not (run / "metrics.json").exists()
    on_disk = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert on_disk["global_step"] == 16, "the step checkpoint after batch 8 (2 optimizers x 8)"
    assert on_disk["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == 8  # training steps
    assert on_disk["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1, "mid epoch 2"

    resumed = _train(_overrides(data, run, pipeline), _env())
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert_same_end(ref, run)
    # issue 15: Lightning's CSV writer used to delete the log of the killed run on resume
    assert_same_csv(ref, run)


@pytest.mark.parametrize("pipeline,sig", [("device", "SIGTERM"),
                                          pytest.param("workers", "SIGTERM", marks=pytest.mark.slow),
                                          pytest.param("workers", "SIGINT", marks=pytest.mark.slow)])
def test_stop_signal_mid_epoch_saves_the_step_and_resume_matches(pipeline, sig, reference, tmp_path):
    """SIGTERM (SLURM, Kubernetes, `timeout`) or SIGINT (Ctrl-C) to the whole process group (with the
    workers pipeline: 2 DataLoader workers) during batch 9: the step finishes, last.ckpt holds step 9 (the
    regular one was at 8), one line, exit code 128 + signal; the same command then ends equal to an
    uninterrupted run, CSV log included."""
    data, ref = reference(pipeline)
    run = tmp_path / "stopped"
    workers = 2 if pipeline == "workers" else 0
    stopped = _train(_overrides(data, run, pipeline, workers), _env(KILL_SIGNAL=sig, KILL_GROUP="1"), script=KILLER)
    signum = {"SIGTERM": 15, "SIGINT": 2}[sig]
    assert stopped.returncode == 128 + signum, (stopped.returncode, stopped.stderr[-12000:])
    err = stopped.stderr.strip().splitlines()
    assert err[-1] == f"stopped by {sig} at step {KILL_AT_BATCH}; rerun the same command to resume", err[-5:]
    assert "Traceback" not in stopped.stderr and "DataLoader worker" not in stopped.stderr, stopped.stderr[-4000:]
    on_disk = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert on_disk["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == KILL_AT_BATCH
    assert not (run / "metrics.json").exists() and not list(run.rglob("*.tmp"))

    resumed = _train(_overrides(data, run, pipeline, workers), _env())
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_end(ref, run)
    assert_same_csv(ref, run)


@pytest.fixture
def _one_thread():
    yield from one_torch_thread()


def _smoke(data: Path, out: Path, *extra: str):
    return compose_cfg(["method=simsiam", "data=imagefolder", f"data.root={data}", "debug=smoke",
                        "trainer.enable_progress_bar=false", *extra], out)


def test_changed_config_starts_fresh_and_keeps_old_checkpoints(tmp_path, capsys, _one_thread):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=11)
    out = tmp_path / "run"
    fgssl.run.train(_smoke(data, out))
    first = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    capsys.readouterr()

    fgssl.run.train(_smoke(data, out))  # same config: resumes (training already complete)
    assert f"resuming from {out / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out

    fgssl.run.train(_smoke(data, out, "method.lr=0.01"))
    text = capsys.readouterr().out
    assert "the config changed: starting fresh" in text
    kept = sorted(tmp_path.glob("run/checkpoints.previous-*"))
    assert len(kept) == 1 and (kept[0] / "last.ckpt").is_file()
    old = torch.load(kept[0] / "last.ckpt", map_location="cpu", weights_only=True)
    assert old["global_step"] == first["global_step"]
    assert fgssl.rundir.same_run_config(out / "checkpoints" / "config.yaml", _smoke(data, out, "method.lr=0.01"))


def test_keep_every_n_epochs_keeps_epoch_checkpoints(tmp_path, _one_thread):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=11)
    out = tmp_path / "run"
    fgssl.run.train(_smoke(data, out, "trainer.max_epochs=3", "trainer.limit_train_batches=1",
                           "trainer.keep_every_n_epochs=2", "eval.knn_every_n_epochs=2"))
    names = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch001.ckpt", "last.ckpt"]  # epochs 0, 1, 2: the second one is kept
    # last.ckpt follows every epoch end, also epoch 2 which has no validation (kNN every 2 epochs)
    kept = torch.load(out / "checkpoints" / "epoch001.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (kept["epoch"], kept["global_step"]) == (1, 2) and (last["epoch"], last["global_step"]) == (2, 3)
    with pytest.raises(FgsslError, match="trainer.keep_every_n_epochs=-1"):
        fgssl.run.train(_smoke(data, tmp_path / "bad", "trainer.keep_every_n_epochs=-1"))
    with pytest.raises(FgsslError, match=r"trainer.limit_train_batches=0.0 must be > 0"):
        fgssl.run.train(_smoke(data, tmp_path / "bad2", "trainer.limit_train_batches=0"))


def test_epoch_end_is_saved_even_when_a_step_save_fell_on_its_last_step(tmp_path, _one_thread):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=11)
    out = tmp_path / "run"
    fgssl.run.train(_smoke(data, out, "trainer.max_epochs=2", "trainer.limit_train_batches=1",
                           "trainer.ckpt_every_n_steps=1", "eval.knn_every_n_epochs=0", "eval.at_end=false"))
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    epochs = last["loops"]["fit_loop"]["epoch_progress"]["current"]
    # the step-1 save of epoch 1 is followed by its epoch-end save: the second epoch is recorded as processed
    assert (last["epoch"], last["global_step"], epochs["processed"]) == (1, 2, 2)


def test_wandb_continues_the_same_run_id(tmp_path, _one_thread, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=11)
    out = tmp_path / "run"
    cfg = _smoke(data, out, "logger=wandb", "logger.mode=offline")
    fgssl.run.train(cfg)
    run_id = (out / "wandb_run_id.txt").read_text().strip()
    fgssl.run.train(_smoke(data, out, "logger=wandb", "logger.mode=offline"))  # resume
    assert (out / "wandb_run_id.txt").read_text().strip() == run_id
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.endswith(run_id) for r in runs), runs
    fgssl.run.train(_smoke(data, out, "logger=wandb", "logger.mode=offline", "seed=1"))  # changed: new run
    assert (out / "wandb_run_id.txt").read_text().strip() != run_id


@pytest.mark.parametrize("damage", ["truncated", "tampered"])
def test_unreadable_checkpoint_gives_one_clear_error(damage, tmp_path, capsys, _one_thread):
    import pickle

    from fgssl.errors import FgsslError

    data = make_imagefolder(tmp_path / "data", classes=3, per_class=11)
    out = tmp_path / "run"
    fgssl.run.train(_smoke(data, out))
    last = out / "checkpoints" / "last.ckpt"
    if damage == "truncated":  # a kill during a copy
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    else:  # an object weights_only=True refuses to build (it would run code on load)
        obj = torch.load(last, map_location="cpu", weights_only=True)
        obj["payload"] = pickle.Pickler  # any non-allowlisted global
        torch.save(obj, last)
    with pytest.raises(FgsslError, match=f"cannot resume from {last}: not a readable checkpoint"):
        fgssl.run.train(_smoke(data, out))
    ev = compose_cfg([f"ckpt={last}", "debug=smoke"])
    with pytest.raises(FgsslError, match=f"ckpt={last}: not a (readable )?fgssl checkpoint"):
        fgssl.run.evaluate(ev)
    fgssl.run.train(_smoke(data, out, "resume=false"))  # starts fresh, keeps the damaged file aside
    assert len(list(tmp_path.glob("run/checkpoints.previous-*/last.ckpt"))) == 1


def test_speed_knobs_are_config_switches():
    from fgssl.factory import build_model as build_method

    cfg = compose_cfg(["method=mocov2", "method.queue_size=64", "trainer.compile=true", "trainer.channels_last=true"])
    m = fgssl.run.apply_speed_knobs(build_method(cfg), cfg, 1)
    from fgssl.nets.backbones import ResNetBackbone

    compiled = [mod for mod in m.modules() if isinstance(mod, ResNetBackbone) and "feature_map" in vars(mod)]
    assert len(compiled) == 2 and all(mod.compiled for mod in compiled), "online and momentum backbones"
    conv = next(p for p in m.backbone.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert compose_cfg(["trainer.precision=bf16-mixed"]).trainer.precision == "bf16-mixed"


@pytest.mark.slow
def test_fault_soak_random_sigkill_and_sigterm_then_resume_matches(reference, tmp_path):
    """One run stopped five times at random steps, by SIGKILL or SIGTERM (to the process group, with
    DataLoader workers), and rerun each time: it ends equal to the uninterrupted run, CSV log included.
    FGSSL_SOAK_SEED picks other points."""
    import random

    data, ref = reference("workers")
    seed = int(os.environ.get("FGSSL_SOAK_SEED", "0"))
    rng = random.Random(seed)
    points = sorted(rng.sample(range(1, 13), 5))  # batches 1..12 of 12: epoch ends (6, 12) included
    sigs = ["SIGKILL", "SIGTERM"] + [rng.choice(["SIGKILL", "SIGTERM"]) for _ in range(3)]
    rng.shuffle(sigs)
    run = tmp_path / "soak"
    for at, sig in zip(points, sigs):
        r = _train(_overrides(data, run, "workers", 2),
                   _env(KILL_SIGNAL=sig, KILL_GROUP="1", KILL_AT_BATCH=str(at)), script=KILLER)
        want = -9 if sig == "SIGKILL" else 143
        assert r.returncode == want, (seed, at, sig, r.returncode, r.stderr[-4000:])
        if sig == "SIGTERM":
            assert _last(r.stderr) == f"stopped by SIGTERM at step {at}; rerun the same command to resume"
            assert "Traceback" not in r.stderr
    final = _train(_overrides(data, run, "workers", 2), _env())
    assert final.returncode == 0, (seed, points, sigs, final.stderr[-4000:])
    assert_same_end(ref, run)
    assert_same_csv(ref, run)


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.mark.slow
def test_sigterm_to_one_ddp_rank_stops_both_at_the_same_step(tmp_path):
    """2 gloo processes, 6 steps; only rank 1 gets SIGTERM (from rank 0, after step 1): both ranks agree
    on a stop step through the per-step all-reduce (rank 0 was never signalled), last.ckpt holds that
    step, the main process prints one line and exits 143, and the same command then finishes the run."""
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=11)
    run = tmp_path / "ddp"
    args = ["method=mocov2", "data=imagefolder", f"data.root={data}", "debug=smoke", "trainer=ddp",
            "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "data.batch_size=8",
            "trainer.max_epochs=3", "trainer.enable_progress_bar=false", "eval.knn_every_n_epochs=0",
            f"hydra.run.dir={run}"]
    r = _train(args, _env(KILL_SIGNAL="SIGTERM", KILL_AT_BATCH="1", KILL_RANK="0", KILL_CHILDREN="1"),
               script=KILLER)
    assert r.returncode == 143, r.stderr[-6000:]
    m = re.fullmatch(r"stopped by SIGTERM at step (\d+); rerun the same command to resume", _last(r.stderr))
    assert m and 1 <= int(m.group(1)) < 6, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    on_disk = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert on_disk["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == int(m.group(1))
    resumed = _train(args, _env())
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6

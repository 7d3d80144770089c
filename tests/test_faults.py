"""Faults that real runs meet (issue 15): two runs in one folder, a failing job inside a sweep, a full
disk, a device that is not there, a bad image found many times. SIGTERM / SIGINT and the CSV log on
resume are in test_resume.py (they compare with an uninterrupted run); the DDP stop and the fault
soak are ``slow`` here."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import fgssl.fsio
import fgssl.run
from conftest import ROOT, compose_cfg, make_imagefolder
from fgssl.errors import FgsslError
from fgssl.lifecycle import RunLock, RunLockedError, check_devices

ENV = dict(os.environ, OMP_NUM_THREADS="1")
PY = sys.executable

#: a run that waits, holding its folder, at its first training step until the file in $FGSSL_GO exists
HOLD = """
import os, runpy, sys, time
import pytorch_lightning as pl
import fgssl.run as run

build = run.build_trainer


class Hold(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        print("holding", flush=True)
        for _ in range(600):
            if os.path.exists(os.environ["FGSSL_GO"]):
                return
            time.sleep(0.2)


def build_trainer(*a, **k):
    trainer = build(*a, **k)
    trainer.callbacks.insert(0, Hold())
    return trainer


run.build_trainer = build_trainer
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(os.path.join(os.environ["FGSSL_REPO"], "train.py"), run_name="__main__")
"""


def _tiny(data: Path, *extra: str):
    """A run of one training step and a small evaluation (CSV log); ``data.batch_size=8`` unless ``extra``
    sets it."""
    batch = [] if any(e.startswith("data.batch_size=") for e in extra) else ["data.batch_size=8"]
    return ["method=simsiam", "data=imagefolder", f"data.root={data}", "debug=smoke", *batch,
            "trainer.limit_train_batches=1", "eval.knn_every_n_epochs=0", "eval.max_images=24",
            "eval.linear_max_iter=20", "trainer.enable_progress_bar=false", *extra]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------- one run per folder
def test_second_run_on_the_same_folder_is_refused(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=6)
    run = tmp_path / "run"
    go = tmp_path / "go"
    args = _tiny(data, f"hydra.run.dir={run}", "logger=none", "eval.at_end=false")
    env = dict(ENV, FGSSL_GO=str(go), FGSSL_REPO=str(ROOT))
    first = subprocess.Popen([PY, "-c", HOLD, *args], cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:  # the first run holds the folder, inside its first training step
            if line.strip() == "holding":
                break
        else:
            pytest.fail("the first run ended before its first step: " + first.stderr.read()[-3000:])
        second = subprocess.run([PY, str(ROOT / "train.py"), *args], cwd=str(ROOT), env=ENV, capture_output=True,
                                text=True, timeout=300)
    finally:
        go.touch()
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 2, (second.returncode, second.stderr[-3000:])
    line = _last_line(second.stderr)
    assert line.startswith(f"fgssl error: run directory {run} is in use by another run (host ")
    assert f"pid {first.pid}" in line and "Traceback" not in second.stderr
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == 1  # the first run finished
    assert not (run / "error.txt").exists()


HOLDER = """
import sys, time
from fgssl.lifecycle import RunLock
lock = RunLock(sys.argv[1]).acquire()  # held while the object lives
print("locked", flush=True)
time.sleep(120)
"""


def test_kill9_leaves_no_stale_lock_and_ddp_ranks_share_the_lock(tmp_path, monkeypatch):
    holder = subprocess.Popen([PY, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"run directory {tmp_path} is in use by another run "
                                                 f"\\(host .*, pid {holder.pid}, started "):
            RunLock(tmp_path).acquire()
        with monkeypatch.context() as m:  # a DDP worker of the holder's run (Lightning sets LOCAL_RANK)
            m.setenv("LOCAL_RANK", "1")
            RunLock(tmp_path).acquire().release()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(tmp_path):  # the OS dropped the dead process's lock
        assert f"pid {os.getpid()}," in (tmp_path / ".fgssl.lock").read_text()


# ---------------------------------------------------------------------- sweeps
def test_sweep_goes_on_after_a_failing_job_and_reports_it(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=6)
    sweep = tmp_path / "sweep"
    r = subprocess.run([PY, str(ROOT / "train.py"), "-m", *_tiny(data, "logger=csv", "data.batch_size=8,99999,6"),
                        f"hydra.sweep.dir={sweep}"],
                       cwd=str(ROOT), env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stderr[-4000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1", "2"]
    assert (jobs[0] / "metrics.json").is_file() and (jobs[2] / "metrics.json").is_file(), "jobs 1 and 3 finish"
    error = (jobs[1] / "error.txt").read_text().splitlines()[0]
    assert error.startswith("fgssl error: data.batch_size=99999") and not (jobs[1] / "metrics.json").exists()
    print(r.stderr[r.stderr.index(f"sweep {sweep}:"):])
    assert f"sweep {sweep}: 2 of 3 job(s) finished, 1 failed" in r.stderr
    assert f"  failed: {jobs[1]}: {error}" in r.stderr
    assert "Traceback" not in r.stderr

    res = subprocess.run([PY, "-m", "fgssl.results", str(sweep), "--no-write"], cwd=str(ROOT), env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "## Missing or failed jobs (1)" in res.stdout
    listed = [ln for ln in res.stdout.splitlines() if ln.startswith(f"- `{jobs[1].name}` (")]
    assert len(listed) == 1 and listed[0].endswith(f": failed: {error} (see error.txt)"), res.stdout
    assert "data.batch_size=99999" in listed[0]


@pytest.mark.slow
def test_fail_fast_stops_the_sweep_at_the_first_failing_job(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=6)
    sweep = tmp_path / "sweep"
    r = subprocess.run([PY, str(ROOT / "train.py"), "-m", *_tiny(data, "logger=none", "data.batch_size=99999,8"),
                        f"hydra.sweep.dir={sweep}", "hydra.callbacks.fgssl_sweep.fail_fast=true"],
                       cwd=str(ROOT), env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "fgssl error: data.batch_size=99999" in r.stderr
    assert [p.name.split("_", 1)[0] for p in sweep.iterdir() if p.is_dir()] == ["0"], "job 2 never ran"


# ---------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_asked_on_a_machine_without_one_is_one_line(tmp_path):
    run = tmp_path / "run"
    t0 = time.perf_counter()
    r = subprocess.run([PY, str(ROOT / "train.py"), "trainer=gpu", "data=imagefolder", f"data.root={tmp_path}",
                        f"hydra.run.dir={run}"], cwd=str(ROOT), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fgssl error: trainer.accelerator=gpu but this machine has no CUDA GPU")
    assert "trainer=cpu" in lines[0]
    # before anything is built: not even the dataset (data.root is an empty folder) is read
    assert not (run / "checkpoints").exists() and not (run / ".fgssl.lock").exists()
    print(f"trainer=gpu refused in {time.perf_counter() - t0:.1f} s (process start included)")


def test_more_gpus_than_the_machine_has_names_the_key(monkeypatch):
    cfg = compose_cfg(["trainer=ddp", "trainer.devices=4"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(FgsslError, match=r"trainer.devices=4 but this machine has 2 CUDA GPU\(s\); use "
                                         r"trainer.devices=2 .*trainer=cpu"):
        check_devices(cfg)
    check_devices(compose_cfg(["trainer=ddp", "trainer.devices=2"]))
    check_devices(compose_cfg(["trainer=cpu", "trainer.devices=4"]))  # CPU processes: any number


# ---------------------------------------------------------------------- disk full
def _fail_fsync(monkeypatch, after: int = 0):
    """The next writes through fgssl.fsio fail with ENOSPC (at fsync, once the data was handed over, as on
    file systems that allocate late) after ``after`` successful ones."""
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(fgssl.fsio.os, "fsync", fsync)


def test_disk_full_on_metrics_and_figures_keeps_the_old_file(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fgssl.eval.suite import write_metrics

    write_metrics({"test/knn_top1": 1.0}, tmp_path)
    fig = plt.figure()
    fgssl.fsio.save_figure(fig, tmp_path / "fig.png")
    old_png = (tmp_path / "fig.png").read_bytes()
    _fail_fsync(monkeypatch)
    with pytest.raises(FgsslError, match=rf"disk full while writing {tmp_path / 'metrics.json'}: it needs "
                                         r"\d+ B, [\d.]+ [KMGT]?B left on that file system; the previous "
                                         r"metrics.json is kept"):
        write_metrics({"test/knn_top1": 2.0}, tmp_path)
    with pytest.raises(FgsslError, match=rf"disk full while writing {tmp_path / 'fig.png'}: it needs [\d.]+ K?B"):
        fgssl.fsio.save_figure(fig, tmp_path / "fig.png")
    plt.close(fig)
    assert json.loads((tmp_path / "metrics.json").read_text())["test/knn_top1"] == 1.0
    assert (tmp_path / "fig.png").read_bytes() == old_png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "metrics.json"], "no temporary file left"


def test_disk_full_while_writing_last_ckpt_keeps_the_last_good_one(tmp_path, monkeypatch):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=6)
    out = tmp_path / "run"
    cfg = compose_cfg(_tiny(data, "trainer.limit_train_batches=2", "trainer.ckpt_every_n_steps=1",
                            "logger=none", "eval.at_end=false"), out)
    _fail_fsync(monkeypatch, after=1)  # step 1's last.ckpt is written, step 2's finds the disk full
    with pytest.raises(FgsslError) as info:
        fgssl.run.train(cfg)
    last = out / "checkpoints" / "last.ckpt"
    msg = str(info.value)
    assert msg.startswith(f"disk full while writing {last}: it needs ") and "\n" not in msg
    assert f"left on that file system; the last good checkpoint {last} (step 1) is kept" in msg
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["config.yaml", "last.ckpt"]


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || "
                        "mount -t tmpfs -o size=1m tmpfs /tmp"], capture_output=True)
    return r.returncode == 0


#: shrinks the run's tmpfs (in the test's own mount namespace) right after step 1's checkpoint, so that
#: step 2's last.ckpt meets a real ENOSPC from the kernel
SHRINK = """
import os, runpy, subprocess, sys
import pytorch_lightning as pl
import fgssl.run as run

build = run.build_trainer
mnt = os.environ["FGSSL_TMPFS"]


class Shrink(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.fit_loop.total_batch_idx == 1:  # before step 2's checkpoint
            st = os.statvfs(mnt)
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            subprocess.run(["mount", "-o", f"remount,size={used + (4 << 20)}", mnt], check=True)


def build_trainer(*a, **k):
    trainer = build(*a, **k)
    trainer.callbacks.insert(0, Shrink())
    return trainer


run.build_trainer = build_trainer
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(os.path.join(os.environ["FGSSL_REPO"], "train.py"), run_name="__main__")
"""


@pytest.mark.slow  # ~40 s; test_disk_full_while_writing_last_ckpt_keeps_the_last_good_one injects ENOSPC quickly
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unprivileged user namespaces (unshare -rm) for a tmpfs")
def test_disk_full_on_a_real_small_tmpfs(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=6)
    mnt = tmp_path / "disk"
    mnt.mkdir()
    run = mnt / "run"
    args = _tiny(data, "trainer.limit_train_batches=2", "trainer.ckpt_every_n_steps=1", "logger=csv",
                 f"hydra.run.dir={run}")
    script = tmp_path / "shrink.py"
    script.write_text(SHRINK)
    inner = (f"mount -t tmpfs -o size=1g tmpfs {mnt} && {PY} {script} " + " ".join(f"'{a}'" for a in args) +
             f"; rc=$?; ls -a {run}/checkpoints > {tmp_path}/ls.txt; "
             f"cp {run}/checkpoints/last.ckpt {tmp_path}/last.ckpt; exit $rc")
    env = dict(ENV, FGSSL_TMPFS=str(mnt), FGSSL_REPO=str(ROOT))
    r = subprocess.run(["unshare", "-rm", "sh", "-c", inner], cwd=str(ROOT), env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-4000:]
    last = run / "checkpoints" / "last.ckpt"
    line = _last_line(r.stderr)
    print(line)
    assert line.startswith(f"fgssl error: disk full while writing {last}: it needs "), r.stderr[-3000:]
    assert f"left on that file system; the last good checkpoint {last} (step 1) is kept" in line
    assert "Traceback" not in r.stderr
    assert (tmp_path / "ls.txt").read_text().split() == [".", "..", "config.yaml", "last.ckpt"], "no .tmp left"
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == 1


# ---------------------------------------------------------------------- bad images, warnings
def test_a_bad_image_found_many_times_is_listed_once(tmp_path):
    from fgssl.data.datamodule import ImageDataset
    from fgssl.data.images import read_bad_log, record_bad

    data = make_imagefolder(tmp_path / "data", classes=1, per_class=3, test_per_class=1)
    bad = sorted((data / "train" / "class_0").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:60])  # truncated: passes a header check, fails to decode
    log = tmp_path / "run" / "bad_images.txt"
    samples = [(str(p), 0) for p in sorted((data / "train" / "class_0").iterdir())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):  # two datasets (training and memory sets), two epochs each
            ds = ImageDataset(samples, lambda im: im, on_bad="skip", bad_log=log)
            for _ in range(2):
                ds[0]
        record_bad(str(bad), "again", log)
    assert [ln.split("\t")[0] for ln in log.read_text().splitlines()] == [str(bad)]
    assert [p for p, _ in read_bad_log(log)] == [str(bad)]


def test_no_warning_that_reports_lost_data_is_filtered():
    lost = ("Experiment logs directory /x/csv exists and is not empty. Previous log files in this directory "
            "will be deleted when the new ones are saved!")
    with warnings.catch_warnings():
        import fgssl.run as run

        cfg = compose_cfg(["logger=none"])
        try:
            run.train(_bad_data(cfg))
        except FgsslError:
            pass
        hidden = [f for f in warnings.filters if f[0] == "ignore" and f[1] is not None and f[1].match(lost)]
    assert not hidden, hidden


def _bad_data(cfg):
    """A config that gets through train()'s warning setup and fails at once at the data."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.data.name = "imagefolder"
        cfg.data.root = "/nonexistent/fgssl-test"
        cfg.out_dir = str(Path(os.environ.get("TMPDIR", "/tmp")) / "fgssl-filter-test")
    return cfg


# ---------------------------------------------------------------------- quiet DataLoader workers
class _Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        time.sleep(0.02)
        return torch.tensor([i])


def test_loader_workers_outlive_a_stop_signal_sent_to_the_process_group():
    """`timeout`, SLURM and Ctrl-C signal the whole process group. torch's workers die on a SIGTERM that
    does not come from their parent (and the main process then fails with `DataLoader worker ...
    exited unexpectedly` in the middle of the step); with fgssl's worker_init_fn they ignore it, the
    main process finishes its step and shuts them down."""
    from torch.utils.data import DataLoader

    from fgssl.lifecycle import QuietWorkerInit

    loader = DataLoader(_Slow(), batch_size=4, num_workers=2, worker_init_fn=QuietWorkerInit())
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # this (main) process: as GracefulStop, go on
    try:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        got = [b for b in it]  # every remaining batch arrives
    finally:
        signal.signal(signal.SIGTERM, old)
    assert len(got) == 15 and all(w.exitcode in (None, 0) for w in it._workers)


def test_disk_full_on_the_decoded_cache_removes_the_partial_file_and_goes_on(tmp_path, monkeypatch):
    """The device pipeline's decoded cache is optional: a full disk leaves no partial file, warns with the
    path, the size needed and the space left, and the decoded images are used from memory."""
    import fgssl.data.device as device

    data = make_imagefolder(tmp_path / "data", classes=2, per_class=3, test_per_class=1)
    samples = [(str(p), 0) for p in sorted((data / "train").rglob("*.jpg"))]
    real_save = torch.save

    def full(obj, f, *a, **k):  # writes part of the file, then the disk is full
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(device.torch, "save", full)
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match=r"disk full while writing .*decoded-.*px\.pt: it needs [\d.]+ [KM]?B, "
                                         r"[\d.]+ [KMGT]?B left on that file system; the decoded images are kept "
                                         r"in memory for this run"):
        split = device.decoded_cache(samples, 16, cache)
    assert split.images.shape == (6, 3, 16, 16) and split.path is None
    assert list(cache.iterdir()) == [], "no partial cache file is left"

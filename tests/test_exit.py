"""A process whose loader workers ignore SIGTERM (QuietWorkerInit) still exits when a loader was left
mid-iteration by an exception (multiprocessing's exit hook would SIGTERM and join them forever)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ROOT

SCRIPT = textwrap.dedent("""
    import torch
    from torch.utils.data import DataLoader, Dataset
    from fgssl.lifecycle import QuietWorkerInit

    class Bad(Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            raise ValueError("bad image")

    kept = []
    try:
        for _ in DataLoader(Bad(), num_workers=1, worker_init_fn=QuietWorkerInit()):
            pass
    except ValueError as e:
        kept.append(e)  # the traceback keeps the loader's iterator, and its worker, alive until exit
    print("done", flush=True)
""")


def test_process_with_a_left_over_quiet_worker_exits():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "done" in r.stdout, r.stderr[-2000:]


def test_main_job_loader_workers_with_wandb(tmp_path):
    """The main job's own settings (wandb offline, device pipeline, 2 loader workers) train a step: a
    first import inside a forked worker used to trip wandb's import hook (ForkedError) and `make train`
    died at its first batch."""
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "FGSSL_CACHE_DIR": str(tmp_path / "cache"),
           "HOME": str(tmp_path)}
    cmd = [sys.executable, str(ROOT / "train.py"), "trainer.limit_train_batches=1", "trainer.max_epochs=1",
           "eval.max_images=32", "eval.knn_every_n_epochs=0", "data.image_size=40", "data.batch_size=16",
           "data.num_workers=2", "data.pipeline=device", f"out_dir={tmp_path / 'run'}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "wandb").is_dir()

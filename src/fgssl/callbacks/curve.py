"""The learning curve: the full evaluation suite at chosen epochs, not only at the end.

With ``eval.every_n_epochs=N > 0``, :class:`LearningCurve` runs the same evaluation as the end of
training (retrieval, fast linear probe, kNN; through the method's ``embed`` hook) once before the
first step (epoch 0: the untrained network of this seed) and after every N-th epoch and the last,
on rank 0. Each point is appended to ``<run dir>/curve.json`` as
``{"epoch": e, "step": s, "test/retrieval_map": ..., ...}`` (written atomically) and logged as
``curve/<metric>`` at step ``s``. ``python -m fgssl.curves`` plots it.

The evaluation leaves training exactly as it found it: the module's train/eval modes are restored,
BatchNorm buffers are not touched (eval mode), and the torch / numpy / python RNG states are saved
and put back, so a run with a curve trains the same weights as one without. A resumed run keeps the
points of the epochs its checkpoint had finished; a fresh start in the same folder starts a new curve.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pytorch_lightning as pl
import torch

from fgssl import layout
from fgssl.fsio import atomic_write_text
from fgssl.methods.progress import train_steps

CURVE_FILE = layout.CURVE


def read_curve(path: Path) -> List[Dict[str, Any]]:
    """The points of a ``curve.json`` (an empty list when there is none)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return list(data.get("points", [])) if isinstance(data, dict) else []


class LearningCurve(pl.Callback):
    """Evaluate at epoch 0, every ``every`` epochs and at the last epoch; append to ``curve.json``."""

    def __init__(self, out_dir: Path, every: int, evaluate: Callable[[pl.LightningModule], Dict[str, float]],
                 resuming: bool):
        self.path = Path(out_dir) / CURVE_FILE
        self.every = int(every)
        self.evaluate = evaluate
        self.resuming = resuming

    # ------------------------------------------------------------------ file
    def _points(self) -> List[Dict[str, Any]]:
        return read_curve(self.path)

    def _write(self, points: List[Dict[str, Any]]) -> None:
        # a temporary file renamed over curve.json; a full disk is one clear error (fgssl.fsio)
        atomic_write_text(self.path, json.dumps({"points": points}, indent=1, sort_keys=True))

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        done = trainer.current_epoch  # epochs finished (restored from the checkpoint on resume)
        points = [p for p in self._points() if p["epoch"] <= done] if self.resuming else []
        self._write(points)
        if done == 0 and train_steps(trainer) == 0 and not any(p["epoch"] == 0 for p in points):
            self._add(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # epochs finished, this one included
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if trainer.is_global_zero and (epoch % self.every == 0 or last):
            self._add(trainer, pl_module, epoch)

    # ------------------------------------------------------------------ one point
    def _add(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        modes = {m: m.training for m in pl_module.modules()}
        np_state, py_state = np.random.get_state(), random.getstate()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=devices):
                metrics = self.evaluate(pl_module)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
            for m, was_training in modes.items():
                m.train(was_training)
        step = train_steps(trainer)
        point = {"epoch": epoch, "step": step, **{k: float(v) for k, v in metrics.items()}}
        points = [p for p in self._points() if p["epoch"] != epoch] + [point]
        self._write(sorted(points, key=lambda p: p["epoch"]))
        if trainer.logger:
            trainer.logger.log_metrics({f"curve/{k.split('/', 1)[-1]}": v for k, v in metrics.items()
                                        if k.startswith("test/")}, step=step)

"""Guards that stop a run early with a clear message instead of wasting hours.

* non-finite loss: checked inside ``SSLMethod.training_step`` (names the step and
  the loss terms that are not finite);
* :class:`CollapseGuard`: SimSiam's collapse indicator ``std(normalize(z))``
  (about ``1/sqrt(d)`` when healthy) below ``threshold`` for ``patience``
  consecutive steps.

Both raise :class:`FgsslError` from inside the training loop, before the step's
checkpoint, so the last good checkpoint on disk is kept.
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict

import numpy as np
import pytorch_lightning as pl
import torch

from fgssl.errors import FgsslError
from fgssl.fsio import DiskFullError, disk_full_error


def train_steps(trainer: pl.Trainer) -> int:
    """Training steps (batches trained) so far, the current one included once its step is done.
    Lightning's ``global_step`` counts every optimizer's step, so it runs twice as fast when a
    regularizer brings its own optimizer (SYN's decoder uses Adam). The count is Lightning's batch
    progress, which checkpoints save and a resume restores."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)


def max_over_ranks(trainer: pl.Trainer, value: int) -> int:
    """The largest ``value`` over all ranks (one all-reduce under DDP; every rank must call it)."""
    if trainer.world_size <= 1:
        return int(value)
    import torch.distributed as dist

    t = torch.tensor([int(value)], device=trainer.strategy.root_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(trainer: pl.Trainer, flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank must call it)."""
    return max_over_ranks(trainer, 1 if flag else 0) > 0


class CollapseGuard(pl.Callback):
    def __init__(self, threshold: float, patience: int, key: str = "train/collapse_std"):
        self.threshold = threshold
        self.patience = patience
        self.key = key
        self.low_steps = 0

    def state_dict(self) -> Dict[str, Any]:
        return {"low_steps": self.low_steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.low_steps = int(state.get("low_steps", 0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is None or self.threshold <= 0:
            return
        value = float(value)
        self.low_steps = self.low_steps + 1 if value < self.threshold else 0
        if self.low_steps >= self.patience:
            raise FgsslError(
                f"collapse detected at step {train_steps(trainer)} (epoch {trainer.current_epoch}): "
                f"{self.key}={value:.2e} < {self.threshold:g} for {self.patience} steps "
                f"(healthy is about 1/sqrt(d)); the last good checkpoint is kept in "
                f"{trainer.default_root_dir}/checkpoints"
            )


class RngState(pl.Callback):
    """Saves the global RNG states (torch, CUDA, numpy, python) in every checkpoint and restores them on
    resume, so a resumed run draws the same random numbers (SYN's perturbations, pair choice, ...) as
    an uninterrupted one. Stored as plain tensors and lists: loadable with ``weights_only=True``."""

    def state_dict(self) -> Dict[str, Any]:
        np_state = np.random.get_state()
        py_state = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": [py_state[0], list(py_state[1]), py_state[2]],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))


class LastCheckpoint(pl.callbacks.Checkpoint):
    """Owns ``checkpoints/last.ckpt``, the file a rerun resumes from.

    It is rewritten at every training-epoch end (after that epoch's validation, if any) and, with
    ``every_n_steps > 0``, every ``every_n_steps`` training steps (:func:`train_steps`), so
    a kill in the middle of a long epoch costs at most that many steps. Each write goes to a file
    beside the old one that is then renamed over it (:func:`fgssl.fsio.checkpoint_io`): a kill
    during a write never leaves a truncated ``last.ckpt``, and a full disk keeps the old one (one
    clear error; the partial file is removed). Lightning's ``ModelCheckpoint`` is only added when
    ``epochNNN.ckpt`` files are to be kept (``trainer.keep_every_n_epochs``). A ``Checkpoint``
    subclass, so Lightning runs it after the guards: a step that trips a guard is never saved."""

    def __init__(self, dirpath: str, every_n_steps: int = 0):
        self.dirpath = dirpath
        self.every_n_steps = every_n_steps
        self._last_saved = -1

    def _save(self, trainer: pl.Trainer) -> None:
        step = train_steps(trainer)
        last = os.path.join(self.dirpath, "last.ckpt")
        failed = None
        try:
            # full state; every rank calls it, rank 0 writes through fsio.checkpoint_io (the Trainer's
            # CheckpointIO): a temporary file beside last.ckpt renamed over it
            trainer.save_checkpoint(last, weights_only=False)
        except DiskFullError as e:
            failed = e  # rank 0 only (it alone writes): it left before the barrier the others wait at
            if trainer.world_size > 1:
                trainer.strategy.barrier("fgssl.last_checkpoint")
        # every rank learns whether rank 0's write failed, so that they all stop at this step
        if any_rank(trainer, failed is not None):
            if failed is None:
                raise FgsslError("rank 0 could not write last.ckpt (disk full); see its message")
            if os.path.exists(last):
                at = f" (step {self._last_saved})" if self._last_saved >= 0 else ""
                kept = f"the last good checkpoint {last}{at} is kept"
            else:
                kept = "no checkpoint was written yet"
            raise disk_full_error(last, failed.needed, kept) from None
        self._last_saved = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = train_steps(trainer)
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step != self._last_saved:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # always: a mid-epoch save at the epoch's last step does not record the finished epoch
        self._save(trainer)

"""``checkpoints/last.ckpt``: written atomically at every epoch end and every N steps, by every rank together."""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch

from fgssl import layout
from fgssl.errors import FgsslError
from fgssl.fsio import DiskFullError, disk_full_error
from fgssl.methods.progress import train_steps


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
        last = os.path.join(self.dirpath, layout.LAST)
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

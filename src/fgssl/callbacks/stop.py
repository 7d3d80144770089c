"""Acting on a stop signal (SIGTERM, SIGINT) at a step boundary: see :class:`fgssl.lifecycle.GracefulStop`."""

from __future__ import annotations

import signal
from typing import Optional

import pytorch_lightning as pl

from fgssl.callbacks.checkpoint import LastCheckpoint, max_over_ranks
from fgssl.lifecycle import GracefulStop, Stopped
from fgssl.methods.progress import train_steps


class StopOnSignal(pl.callbacks.Checkpoint):
    """Ends ``trainer.fit`` after a stop signal, with ``last.ckpt`` at the last finished step.

    At every training-step end (and epoch end) all ranks agree, with one one-number all-reduce, on
    whether any of them was signalled, so they all stop at the same step. The step that was running
    finishes; ``last.ckpt`` is written at it (through :class:`LastCheckpoint`, unless that step was
    just written); the step's metrics reach the loggers; then, at the start of the next step (or at
    the end of the epoch when it was the epoch's last step, after the epoch-end checkpoint),
    :class:`Stopped` is raised on every rank. Lightning then runs its exception path (the loaders'
    workers are shut down, the loggers finalized) and :func:`fgssl.lifecycle.run_job` prints the line.

    A ``Checkpoint`` subclass placed after :class:`LastCheckpoint`, so Lightning runs it after the
    guards and after the regular checkpoint of the step.
    """

    def __init__(self, stop: GracefulStop, last: LastCheckpoint):
        self.stop = stop
        self.last = last
        self.pending = False

    def _agree(self, trainer: pl.Trainer) -> bool:
        signum = max_over_ranks(trainer, self.stop.signum or 0)  # SIGTERM (15) wins over SIGINT (2)
        if signum:
            self.stop.signum = signum
        return bool(signum)

    def _raise(self) -> None:
        raise Stopped(self.stop.signum or signal.SIGTERM, self.stop.step)

    def setup(self, trainer, pl_module, stage: Optional[str] = None) -> None:
        self.stop.deferred = True

    def on_train_start(self, trainer, pl_module) -> None:
        self.stop.reinstall()  # Lightning registered its own SIGTERM handler just before this hook
        self.stop.step = train_steps(trainer)  # where a resumed run starts (0 when fresh)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.pending:
            self._raise()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = train_steps(trainer)
        if self.last._last_saved == step:
            self.stop.step = step
        if self.pending or not self._agree(trainer):
            return
        if self.last._last_saved != step:
            self.last._save(trainer)
        self.stop.step = step
        self.pending = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.stop.step = train_steps(trainer)  # LastCheckpoint, earlier in the list, wrote the epoch end
        if self.pending or self._agree(trainer):
            self.pending = True
            self._raise()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.stop.deferred = False
        if self.stop.signum is not None:  # a signal after the last step: the final checkpoint is written
            self._raise()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.stop.deferred = False

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

import pytorch_lightning as pl

from fgssl.errors import FgsslError


class CollapseGuard(pl.Callback):
    def __init__(self, threshold: float, patience: int, key: str = "train/collapse_std"):
        self.threshold = threshold
        self.patience = patience
        self.key = key
        self.low_steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is None or self.threshold <= 0:
            return
        value = float(value)
        self.low_steps = self.low_steps + 1 if value < self.threshold else 0
        if self.low_steps >= self.patience:
            raise FgsslError(
                f"collapse detected at step {trainer.global_step} (epoch {trainer.current_epoch}): "
                f"{self.key}={value:.2e} < {self.threshold:g} for {self.patience} steps "
                f"(healthy is about 1/sqrt(d)); the last good checkpoint is kept in "
                f"{trainer.default_root_dir}/checkpoints"
            )

"""Stop a collapsing run early with a clear message instead of wasting hours.

:class:`CollapseGuard` watches SimSiam's collapse indicator ``std(normalize(z))`` (about ``1/sqrt(d)`` when
healthy): below ``threshold`` for ``patience`` consecutive steps it raises :class:`FgsslError` from inside the
training loop, before the step's checkpoint, so the last good checkpoint on disk is kept. (A non-finite loss is
caught inside ``SSLMethod.training_step``, which names the step and the terms.)
"""

from __future__ import annotations

from typing import Any, Dict

import pytorch_lightning as pl

from fgssl.errors import FgsslError
from fgssl.methods.progress import train_steps


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

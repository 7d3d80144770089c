"""Shared plumbing of the regularizers' image-grid callbacks (SYN pairs, LCR maps)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from fgssl.methods.progress import train_steps


def eval_images(trainer: pl.Trainer, n: int) -> Optional[Tensor]:
    """``n`` evenly spaced eval-transformed images of the test set (train-eval set as fallback)."""
    dm = getattr(trainer, "datamodule", None)
    ds = getattr(dm, "test_set", None) or getattr(dm, "memory_set", None)
    if ds is None or len(ds) == 0:
        return None
    n = min(n, len(ds))
    idx = torch.linspace(0, len(ds) - 1, n).round().long().tolist()
    items = [ds[i][0] for i in idx]
    return torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])


def is_image_epoch(trainer: pl.Trainer, every: int) -> bool:
    """True on rank 0 every ``every`` epochs and after the last epoch (``every <= 0``: never)."""
    if every <= 0 or not trainer.is_global_zero:
        return False
    epoch = trainer.current_epoch
    last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch + 1 >= trainer.max_epochs
    return (epoch + 1) % every == 0 or last


def log_png(trainer: pl.Trainer, key: str, path: Path, caption: Optional[List[str]] = None) -> None:
    """Log a written PNG to every wandb logger of ``trainer``; a failure only warns."""
    for lg in trainer.loggers:
        if isinstance(lg, pl.loggers.WandbLogger):
            try:
                kw = {"caption": caption} if caption else {}
                lg.log_image(key=key, images=[str(path)], step=train_steps(trainer), **kw)
            except Exception as e:  # noqa: BLE001 - a figure must never stop training
                warnings.warn(f"could not log {path.name} to wandb: {e}", stacklevel=1)

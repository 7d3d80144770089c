"""The online kNN monitor: ``val/knn_top1`` every ``eval.knn_every_n_epochs`` epochs.

Lightning's validation loop runs two loaders (the training images as the memory bank, the test images as
queries); the method's ``validation_step`` returns each batch's evaluation feature and label, this callback
collects them, all-gathers them under DDP and logs the weighted-kNN top-1 (Wu et al. 2018; ``eval/knn.py``).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor

from fgssl.eval.knn import weighted_knn_predict


class KnnMonitor(pl.Callback):
    def __init__(self, k: int = 200, t: float = 0.1):
        self.k, self.t = int(k), float(t)
        self._feats: Dict[int, List[Tuple[Tensor, Tensor]]] = {}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._feats = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs is not None:
            self._feats.setdefault(dataloader_idx, []).append(outputs)

    def _gathered(self, pl_module, idx: int, n: int) -> Tuple[Tensor, Tensor]:
        f = torch.cat([t[0] for t in self._feats[idx]])
        y = torch.cat([t[1] for t in self._feats[idx]])
        if pl_module.trainer.world_size > 1:  # contiguous shards (ShardSampler): rank order = dataset order
            f = pl_module.all_gather(f).flatten(0, 1)[:n]
            y = pl_module.all_gather(y).flatten(0, 1)[:n]
        return f, y

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if len(self._feats) < 2:
            return
        dm = trainer.datamodule
        mf, my = self._gathered(pl_module, 0, len(dm.memory_set))
        tf, ty = self._gathered(pl_module, 1, len(dm.test_set))
        num_classes = int(torch.cat([my, ty]).max().item()) + 1
        pred = weighted_knn_predict(tf, mf, my, num_classes, self.k, self.t)
        acc = (pred == ty).float().mean() * 100.0
        pl_module.log("val/knn_top1", acc, prog_bar=True, sync_dist=False, rank_zero_only=False)
        self._feats = {}

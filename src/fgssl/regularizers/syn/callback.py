"""SYN callback: the warm start of the dimension statistics, image grids.

What SYN does outside its loss (``regularizers/syn/regularizer.py`` holds the equations; the nu schedule
reads each step's training progress there):

* **Warm start.** At ``on_train_start`` (after the dataloaders exist and a
  checkpoint, if any, was restored) it runs one no-grad pass over the *training
  views* -- the same augmented views whose statistics the EMA tracks during
  training -- with the encoder in train mode (batch statistics, as in a training
  step) and sets the running mean/variance to the exact moments of that pass,
  all-reduced across DDP ranks. Every BatchNorm running statistic of the model is
  restored afterwards (``fgssl.nets.bn_state.bn_stats_kept``), so the pass leaves no
  trace but the SYN statistics.
  The pass is as long as one training epoch (``limit_train_batches`` applies), capped
  by ``synthesis.warm_start_batches``. It is skipped when the statistics are already
  initialised (a resumed run restores them from the checkpoint) or when
  ``synthesis.warm_start=false`` (the first training batch then initialises them).
* **Image grid** (paper Fig. 4). Every ``log_images_every_n_epochs`` epochs and
  after the last one, a fixed set of test images (the same every time) ``x``, their
  reconstructions ``g(z)`` and the decoded perturbed vectors ``g(z~)`` (upsampled to
  the input size) are written as a 3-row PNG to
  ``<run_dir>/figures/syn_pairs_epochXXX.png`` (run dir = ``trainer.default_root_dir``,
  XXX = Lightning's 0-based epoch) and logged to wandb under ``syn/pairs`` when a
  WandbLogger is attached. The model is put in eval mode for it
  (:meth:`SynthesisRegularizer.synthesize`).
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from fgssl.regularizers.images import eval_images, is_image_epoch, log_png


def save_pairs_grid(x: Tensor, rec: Tensor, pert: Tensor, path: Path) -> Path:
    """3 x N PNG grid: rows x, g(z), g(z~), all de-normalised to [0, 1] at the size of ``x``."""
    from torchvision.utils import make_grid, save_image

    from fgssl.data.transforms import denormalize

    size = x.shape[-2:]
    rows = [x.float().cpu()]
    for r in (rec, pert):
        rows.append(F.interpolate(r.float().cpu(), size=size, mode="bilinear", align_corners=False))
    imgs = torch.cat([torch.stack([denormalize(im) for im in row]) for row in rows])
    grid = make_grid(imgs, nrow=x.shape[0], padding=2, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, str(path))
    return path


def one_off_loader(loader):
    """A loader over the same batches as ``loader`` that shares no iterator with it.

    With ``persistent_workers``, iterating the training loader itself would reset the worker
    iterator that Lightning already started for epoch 0, so that epoch would not get the batches an
    identical run without the warm start gets. The copy has its own sampler (same seed and epoch:
    the same batches and, with per-sample augmentation seeds, the same images) and its own
    generator, and no persistent workers."""
    if hasattr(loader, "one_off"):  # the device pipeline's loader copies itself
        return loader.one_off()
    if not isinstance(loader, DataLoader) or loader.batch_size is None:  # a custom batch_sampler: as is
        return loader
    sampler = copy.copy(loader.sampler)
    if hasattr(sampler, "skip"):
        sampler.skip = 0
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, generator=torch.Generator().manual_seed(0))


class SynthesisCallback(pl.Callback):
    def __init__(self, reg):
        super().__init__()
        self.reg = reg
        self._x: Optional[Tensor] = None

    # ------------------------------------------------------------------ warm start
    def on_train_start(self, trainer, pl_module) -> None:
        c = self.reg.cfg
        if not c.warm_start or self.reg.stats.initialised:
            return
        loader = trainer.train_dataloader
        if loader is None:
            return
        limit = trainer.num_training_batches
        limit = limit if isinstance(limit, int) or (isinstance(limit, float) and math.isfinite(limit)) else None
        if c.warm_start_batches:
            limit = min(int(c.warm_start_batches), limit) if limit is not None else int(c.warm_start_batches)
        self.warm_start(pl_module, one_off_loader(loader), limit, trainer.precision_plugin.forward_context())

    @torch.no_grad()
    def warm_start(self, method, loader, max_batches: Optional[int] = None, context=None) -> int:
        """Set the statistics from one pass over ``loader`` (batches ``((x1, x2), y)``); returns #batches."""
        from contextlib import nullcontext

        from fgssl.nets.bn_state import bn_stats_kept

        stats = self.reg.stats
        was_training = method.training
        method.train()
        acc = None
        n = 0
        try:
            with bn_stats_kept(method), context if context is not None else nullcontext():
                for i, batch in enumerate(loader):
                    if max_batches is not None and i >= int(max_batches):
                        break
                    views = batch[0][: 2 if method.encodes_view2() else 1]  # the views a step encodes
                    for v in views:
                        _, z = method.encode(v.to(method.device, non_blocking=True))
                        m = stats.local_moments(z.float())
                        acc = m if acc is None else acc + m
                    n += 1
        finally:
            method.train(was_training)
        if acc is None:  # every rank must take part in the all-reduce
            acc = torch.zeros(2 * stats.mean.numel() + 1, dtype=torch.float64, device=stats.mean.device)
        stats.set_from_moments(acc.to(stats.mean.device))
        return n

    # ------------------------------------------------------------------ image grid
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not is_image_epoch(trainer, int(self.reg.cfg.log_images_every_n_epochs)):
            return
        epoch = trainer.current_epoch
        try:
            if self._x is None:
                self._x = eval_images(trainer, max(2, int(self.reg.cfg.log_images_n)))
            if self._x is None:
                return
            x = self._x.to(pl_module.device)
            rec, pert = self.reg.synthesize(pl_module, x)
            path = Path(trainer.default_root_dir) / "figures" / f"syn_pairs_epoch{epoch:03d}.png"
            save_pairs_grid(x, rec, pert, path)
        except Exception as e:  # noqa: BLE001 - a figure must never stop training
            warnings.warn(f"SYN: could not write the image grid: {type(e).__name__}: {e}", stacklevel=1)
            return
        log_png(trainer, "syn/pairs", path, [f"epoch {epoch}: x / g(z) / g(z~)"])

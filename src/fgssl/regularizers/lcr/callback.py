"""LCR image grids: input / Grad-CAM of the SSL loss / branch attention.

Every ``rationale.log_images_every_n_epochs`` epochs (and after the last one) the
callback takes a fixed batch of test images (the same ones every time), computes

* the Grad-CAM ``ReLU(sum_c A * dL_C/dA)`` of the method's own loss on the pair
  (x, hflip(x)) -- the first view's map, as in training;
* the branch attention used by the evaluated feature,

with the model in eval mode (no BatchNorm statistics, queue or parameter is
touched), and writes a 3-row grid to ``<run_dir>/figures/lcr_maps_epochXXX.png``
(run dir = ``trainer.default_root_dir``, XXX = Lightning's 0-based epoch). With a
WandbLogger the same PNG is logged under ``lcr/maps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from fgssl.fsio import save_figure
from fgssl.nets.gradcam import gradcam_map
from fgssl.regularizers.images import eval_images, is_image_epoch, log_png


def compute_maps(method, reg, x: Tensor) -> Tuple[Tensor, Tensor]:
    """(Grad-CAM, attention), each (N, h, w), for images ``x`` (model put in eval mode and restored)."""
    a1, g1 = method.pair_gradcam(x)
    was_training = method.training
    method.eval()  # the branch's BatchNorm: running statistics, left untouched
    try:
        with torch.no_grad():
            cam = gradcam_map(a1.float(), g1)
            att = reg.attention(a1)
    finally:
        method.train(was_training)
    return cam, att


def _upsample(m: Tensor, size) -> Tensor:
    return F.interpolate(m[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def save_grid(x: Tensor, cam: Tensor, att: Tensor, path: Path, title: str = "") -> Path:
    """3 x N grid: the images, their Grad-CAM (per-image max-normalised), the attention in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from fgssl.data.transforms import denormalize

    n = x.shape[0]
    size = x.shape[-2:]
    imgs = torch.stack([denormalize(xi) for xi in x.cpu()]).permute(0, 2, 3, 1).numpy()
    cam_u = _upsample(cam.cpu(), size)
    cam_u = cam_u / (cam_u.flatten(1).max(dim=1).values.view(-1, 1, 1) + 1e-12)
    att_u = _upsample(att.cpu(), size).clamp(0, 1)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.0), squeeze=False)
    rows = (("input", None), ("Grad-CAM of L_C", cam_u), ("branch attention", att_u))
    for r, (name, maps) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(imgs[i])
            if maps is not None:
                ax.imshow(maps[i].numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=100)  # atomic; a full disk is one clear error (fgssl.fsio)
    plt.close(fig)
    return path


class RationaleMapsCallback(pl.Callback):
    """Writes (and logs to wandb) the LCR map grid every ``every_n_epochs`` and after the last epoch."""

    def __init__(self, reg, every_n_epochs: int = 5, num_images: int = 8):
        self.reg = reg  # the RationaleRegularizer whose maps are drawn
        self.every = max(1, int(every_n_epochs))
        self.num = max(1, int(num_images))
        self._x: Optional[Tensor] = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not is_image_epoch(trainer, self.every):
            return
        reg = self.reg
        if self._x is None:
            self._x = eval_images(trainer, self.num)
        if reg is None or self._x is None:
            return
        epoch = trainer.current_epoch
        x = self._x.to(pl_module.device)
        cam, att = compute_maps(pl_module, reg, x)
        path = Path(trainer.default_root_dir) / "figures" / f"lcr_maps_epoch{epoch:03d}.png"
        save_grid(x, cam, att, path, f"LCR ({reg.mode}) epoch {epoch}")
        log_png(trainer, "lcr/maps", path)

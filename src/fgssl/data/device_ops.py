"""The device pipeline's batched ops: crop-and-resize of every box in one ``roi_align`` call, the colour
steps per image in each image's own order, grayscale, blur, flip (see :mod:`fgssl.data.device`)."""

from __future__ import annotations

from typing import Callable

import kornia  # at import, not in a function: a first import inside a forked loader worker trips wandb's
import torch  # import hook ("ForkedError: not valid in a forked process") and killed the main job's loader
from torch import Tensor
from torchvision.ops import roi_align

from fgssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, _blur_kernel
from fgssl.data.view_params import (
    BLUR,
    BRIGHT,
    CONTRAST,
    FLIP,
    GRAY,
    HEIGHT,
    HUE,
    JITTER,
    LEFT,
    NPARAM,
    ORDER,
    SAT,
    SIGMA,
    TOP,
    WIDTH,
)


def _boxes(params: Tensor, sizes: Tensor, side: int) -> Tensor:
    """Boxes (x1, y1, x2, y2) in cache pixels of crops given in original pixels (the cache is S x S)."""
    sy = side / sizes[:, 0].double()
    sx = side / sizes[:, 1].double()
    top, left, h, w = params[:, TOP], params[:, LEFT], params[:, HEIGHT], params[:, WIDTH]
    return torch.stack([left * sx, top * sy, (left + w) * sx, (top + h) * sy], dim=1)


def crop_resize(images: Tensor, boxes: Tensor, which: Tensor, size: int) -> Tensor:
    """Crop ``boxes`` (K, 4) from ``images[which]`` and resize each to size x size: one roi_align call
    (``aligned=True``: pixel centres at +0.5 as in torchvision's resize; adaptive sampling averages
    ``ceil(box/size)`` points per output pixel, i.e. an antialiased downscale). Returns float in [0, 1]."""

    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images
    rois = torch.cat([which.to(x.dtype).unsqueeze(1), boxes.to(x.dtype)], dim=1).to(x.device)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True).clamp_(0.0, 1.0)


def hue_shift(x: Tensor, turns: Tensor) -> Tensor:
    """torchvision's ``adjust_hue`` (HSV hue + ``turns``) for a batch with per-image shifts, in closed form.

    Our own op, not ``kornia.enhance.adjust_hue``: same result (within 2e-6 of torchvision, tested), about
    2.4x faster on the CPU (the hue step is the most expensive colour step; ``make bench`` times both, see
    docs/data_pipeline.md). HSV -> RGB is ``c = V - V S clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6H) mod 6``,
    n = 5, 3, 1 for R, G, B, with ``V = max`` and ``V S = max - min`` of the input.
    """
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    d = maxc - minc
    dz = torch.where(d > 0, d, torch.ones_like(d))
    h = torch.where(maxc == r, (g - b) / dz, torch.where(maxc == g, 2.0 + (b - r) / dz, 4.0 + (r - g) / dz))
    h6 = torch.remainder(torch.where(d > 0, h, torch.zeros_like(h)) + 6.0 * turns.view(-1, 1, 1), 6.0)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + h6.unsqueeze(1), 6.0)
    return maxc.unsqueeze(1) - d.unsqueeze(1) * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _subset(x: Tensor, idx: Tensor, fn: Callable[[Tensor], Tensor]) -> None:
    if idx.numel():
        x.index_copy_(0, idx, fn(x.index_select(0, idx)))


def augment(images: Tensor, sizes: Tensor, params: Tensor, size: int) -> Tensor:
    """Both views of a batch on the images' device.

    ``images`` (B, 3, S, S) uint8 on the device, ``sizes`` (B, 2) original (H, W) and ``params``
    (B, 2, NPARAM) on the CPU. Returns (2, B, 3, size, size) normalised float32.
    """
    dev = images.device
    b = images.shape[0]
    p = params.transpose(0, 1).reshape(2 * b, NPARAM)  # view-major: rows 0..B-1 view 1, B..2B-1 view 2
    which = torch.arange(b).repeat(2)
    x = crop_resize(images, _boxes(p, sizes.repeat(2, 1), images.shape[-1]), which, size)

    def rows(mask: Tensor) -> Tensor:  # index sets are computed on the CPU: no device sync
        return mask.nonzero().flatten().to(dev)

    def factor(col: int, idx: Tensor) -> Tensor:
        return p[:, col].float().to(dev).index_select(0, idx)

    jitter = p[:, JITTER] > 0
    order = p[:, ORDER].long()
    steps = {
        0: lambda t, i: kornia.enhance.adjust_brightness_accumulative(t, factor(BRIGHT, i)),
        1: lambda t, i: kornia.enhance.adjust_contrast_with_mean_subtraction(t, factor(CONTRAST, i)),
        2: lambda t, i: kornia.enhance.adjust_saturation_with_gray_subtraction(t, factor(SAT, i)),
        3: lambda t, i: hue_shift(t, factor(HUE, i)),
    }
    neutral = {0: (BRIGHT, 1.0), 1: (CONTRAST, 1.0), 2: (SAT, 1.0), 3: (HUE, 0.0)}
    for slot in range(4):  # each image's own order: at slot k, image n runs its order[n, k]-th step
        for op, fn in steps.items():
            col, ident = neutral[op]
            sel = jitter & (order[:, slot] == op) & (p[:, col] != ident)  # torchvision skips a None range
            i = rows(sel)
            _subset(x, i, lambda t, fn=fn, i=i: fn(t, i).clamp(0.0, 1.0))
    _subset(x, rows(p[:, GRAY] > 0), lambda t: kornia.color.rgb_to_grayscale(t).expand(-1, 3, -1, -1))
    blur = rows(p[:, BLUR] > 0)
    if blur.numel():
        k = _blur_kernel(size)
        sig = p[:, SIGMA].float().to(dev).index_select(0, blur)
        _subset(x, blur, lambda t: kornia.filters.gaussian_blur2d(t, (k, k), torch.stack([sig, sig], 1),
                                                                  border_type="reflect"))
    _subset(x, rows(p[:, FLIP] > 0), lambda t: t.flip(-1))
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    return ((x - mean) / std).view(2, b, 3, size, size)


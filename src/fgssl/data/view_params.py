"""Per-image view parameters of the device pipeline, drawn from each image's own seed exactly as
torchvision's ``mocov2_view`` draws them (same calls, same order; see :mod:`fgssl.data.device`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: Layout of one view's parameter row (see :func:`view_params`).
TOP, LEFT, HEIGHT, WIDTH, JITTER, BRIGHT, CONTRAST, SAT, HUE = range(9)
ORDER = slice(9, 13)
GRAY, BLUR, SIGMA, FLIP = 13, 14, 15, 16
NPARAM = 17
_LOG_RATIO = torch.log(torch.tensor((3.0 / 4.0, 4.0 / 3.0)))  # float32, as torchvision's RandomResizedCrop


@dataclass(frozen=True)
class ViewKnobs:
    """The augmentation-strength knobs of ``data.*`` (defaults = MoCo v2), as in ``mocov2_view``."""

    min_scale: float = 0.2
    jitter_strength: float = 1.0
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5

    def ranges(self):
        """torchvision's ColorJitter ranges (None = that step is off and draws nothing)."""
        s = self.jitter_strength

        def around(v: float, center: float, clip: bool):
            lo, hi = center - v, center + v
            lo = max(lo, 0.0) if clip else lo
            return None if lo == hi == center else (float(lo), float(hi))

        return (around(0.4 * s, 1.0, True), around(0.4 * s, 1.0, True), around(0.4 * s, 1.0, True),
                around(0.1 * s, 0.0, False))


def _uniform(g: torch.Generator, lo, hi) -> float:
    return torch.empty(1).uniform_(lo, hi, generator=g).item()


def _draw_view(g: torch.Generator, height: int, width: int, k: ViewKnobs, out: Tensor) -> None:
    """One view's parameters, drawn exactly as torchvision's ``mocov2_view`` draws them (same calls, same order)."""
    # RandomResizedCrop(scale=(min_scale, 1), ratio=(3/4, 4/3)), in the original image's pixels
    area = height * width
    for _ in range(10):
        target = area * _uniform(g, k.min_scale, 1.0)
        aspect = torch.exp(torch.empty(1).uniform_(_LOG_RATIO[0], _LOG_RATIO[1], generator=g)).item()
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
            break
    else:  # torchvision's fallback: the central crop at the nearest allowed ratio
        ratio = float(width) / float(height)
        if ratio < 3 / 4:
            w, h = width, int(round(width / (3 / 4)))
        elif ratio > 4 / 3:
            h, w = height, int(round(height * (4 / 3)))
        else:
            w, h = width, height
        i, j = (height - h) // 2, (width - w) // 2
    out[TOP], out[LEFT], out[HEIGHT], out[WIDTH] = i, j, h, w
    # RandomApply([ColorJitter(...)], p=jitter_p): randperm(4), then one uniform per active range
    out[BRIGHT], out[CONTRAST], out[SAT], out[HUE] = 1.0, 1.0, 1.0, 0.0
    out[ORDER] = torch.arange(4)
    if torch.rand(1, generator=g).item() < k.jitter_p:
        out[JITTER] = 1.0
        out[ORDER] = torch.randperm(4, generator=g).to(out.dtype)
        for slot, r in zip((BRIGHT, CONTRAST, SAT, HUE), k.ranges()):
            if r is not None:
                out[slot] = _uniform(g, r[0], r[1])
    out[GRAY] = float(torch.rand(1, generator=g).item() < k.gray_p)  # RandomGrayscale
    if torch.rand(1, generator=g).item() < k.blur_p:  # RandomApply([GaussianBlur(sigma=(0.1, 2))])
        out[BLUR] = 1.0
        out[SIGMA] = _uniform(g, 0.1, 2.0)
    out[FLIP] = float(torch.rand(1, generator=g).item() < 0.5)  # RandomHorizontalFlip


def view_params(seed: int, height: int, width: int, knobs: ViewKnobs = ViewKnobs()) -> Tensor:
    """``(2, NPARAM)`` float64: both views of one image, from its augmentation seed."""
    g = torch.Generator().manual_seed(int(seed))
    out = torch.zeros((2, NPARAM), dtype=torch.float64)
    _draw_view(g, height, width, knobs, out[0])
    _draw_view(g, height, width, knobs, out[1])
    return out


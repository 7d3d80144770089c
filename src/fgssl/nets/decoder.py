"""SYN decoder ``g``: a pooled feature vector ``z`` -> an image (Wang et al., ECCV 2024, Fig. 1a).

The paper only says that a decoder turns the original and the perturbed feature
vectors into images. Our design (docs/method.md, SYN, decoder):

* ``Linear(C -> width * s0 * s0)`` lifts ``z`` to a small ``s0 x s0`` map;
* ``k`` residual *up-blocks* each double the side. An up-block is
  *resize-conv* (nearest-neighbour upsampling followed by a 3x3 conv), never a
  transposed convolution, so there is no checkerboard pattern:

      main:     up2 -> conv3x3 -> norm -> ReLU -> conv3x3 -> norm
      shortcut: conv1x1 (at the low resolution) -> up2
      out:      ReLU(main + shortcut)

  The channel count halves at every block (never below ``min_width``);
* a final ``norm -> ReLU -> conv3x3 -> 3`` head with no output activation: the
  image lives in the *normalised-pixel* space of the encoder's input (ImageNet
  mean/std), the same space as the views it reconstructs.

``s0`` and ``k`` are chosen so that ``s0 * 2**k`` is the requested side with
``4 <= s0 < 8`` (112 = 7 * 2**4, 32 = 4 * 2**3, 16 = 4 * 2**2); a side that is
not of that form (e.g. 50) is reached by one final bilinear resize.

Normalisation is per sample by default (GroupNorm). That keeps ``g`` a function
of each vector alone: ``g(z_i)`` does not depend on the other vectors of the
batch, so ``g(z)`` computed for ``L_R`` is exactly the ``g(sg z)`` of the
synthesized pair, and ``g(z~)`` differs from it only through the perturbed
dimensions (with BatchNorm, zero/mean perturbations would also shift the batch
statistics). ``norm="batch"`` and ``norm="none"`` are available.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from fgssl.errors import ConfigError


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "group":
        groups = math.gcd(ch, 32 if ch >= 128 else max(1, ch // 4))
        return nn.GroupNorm(groups, ch)
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"synthesis.decoder_norm={kind!r} must be group, batch or none")


def decoder_plan(size: int) -> Tuple[int, int]:
    """``(s0, k)``: start side and number of doublings, ``s0 * 2**k >= size``, ``4 <= s0 < 8``."""
    if size < 4:
        raise ValueError(f"decoder size {size} is too small (minimum 4 px)")
    k = max(0, int(math.floor(math.log2(size / 4))))
    s0 = math.ceil(size / 2**k)
    return s0, k


class UpBlock(nn.Module):
    """Residual resize-conv block that doubles the spatial side."""

    def __init__(self, cin: int, cout: int, norm: str = "group", mode: str = "nearest"):
        super().__init__()
        self.mode = mode
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.n1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.n2 = _norm(norm, cout)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.act = nn.ReLU(inplace=True)

    def _up(self, x: Tensor) -> Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.n1(self.conv1(self._up(x))))
        h = self.n2(self.conv2(h))
        # 1x1 conv commutes with nearest upsampling: apply it at the low resolution (4x cheaper).
        return self.act(h + self._up(self.skip(x)))


class Decoder(nn.Module):
    """``g: R^C -> R^{3 x size x size}`` (see module docstring)."""

    def __init__(self, in_dim: int, size: int, width: int = 128, min_width: int = 16, norm: str = "group",
                 upsample: str = "nearest"):
        super().__init__()
        if upsample not in ("nearest", "bilinear"):
            raise ConfigError(f"synthesis.decoder_upsample={upsample!r} must be nearest or bilinear")
        self.size = int(size)
        self.s0, k = decoder_plan(self.size)
        self.width = int(width)
        self.fc = nn.Linear(in_dim, self.width * self.s0 * self.s0)
        blocks, ch = [], self.width
        for _ in range(k):
            out = max(min_width, ch // 2)
            blocks.append(UpBlock(ch, out, norm, upsample))
            ch = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(_norm(norm, ch), nn.ReLU(), nn.Conv2d(ch, 3, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], self.width, self.s0, self.s0)
        x = self.head(self.blocks(F.relu(h)))
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

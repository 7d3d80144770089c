"""A non-learned floor: the joint colour histogram of the evaluation crop.

Colour is the strongest single cue of many fine-grained classes at low resolution (a bird's
plumage), so a learned feature that does not beat a colour histogram has learned nothing a
table of colour counts would not give. ``python evaluate.py ckpt=colorhist`` runs this feature
through the same retrieval, linear-probe and kNN code as a trained network.

The feature of an image is the histogram of its pixels over ``bins**3`` RGB cells (each channel
cut into ``bins`` equal intervals of [0, 1]), divided by the pixel count and L2-normalised.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fgssl.data.transforms import denormalize


class ColorHistogram(nn.Module):
    """Duck-types the method's ``embed`` hook: ``embed(x, feature) -> (N, bins**3)``, L2-normalised."""

    def __init__(self, bins: int = 8):
        super().__init__()
        if bins < 1:
            raise ValueError(f"bins={bins} must be >= 1")
        self.bins = bins
        self.feat_dim = bins ** 3  # read by the SGD linear protocol

    @torch.no_grad()
    def embed(self, x: Tensor, feature: str = "auto") -> Tensor:
        rgb = denormalize(x.float())  # (N, 3, H, W) in [0, 1]
        q = (rgb * self.bins).long().clamp_(0, self.bins - 1)
        cell = (q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2]  # (N, H, W)
        n = x.shape[0]
        hist = torch.zeros(n, self.bins ** 3, device=x.device)
        hist.scatter_add_(1, cell.flatten(1), torch.ones_like(cell.flatten(1), dtype=hist.dtype))
        hist /= cell[0].numel()
        return torch.nn.functional.normalize(hist, dim=1)

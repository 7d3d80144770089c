"""The LCR rationale branch (Shu, van den Hengel, Liu, CVPR 2023, Sec. 3.2).

A deliberately small head on the layer4 map ``A`` (N, C, h, w)::

    M = max_k ReLU(BN(W_k * A))        W: K 1x1 filters of C channels, no bias

It projects every position onto K directions (K = 32 in the public code,
``conv16``/``bn16``) and keeps, per position, the strongest rectified
response. Its limited capacity is the point: fitted to the Grad-CAM of the
SSL loss, it can only express the rationale shared by many images. The output
is the raw map ``M`` (N, h, w); the normalisation to an attention map in [0, 1]
depends on the LCR mode and lives in ``fgssl.losses.rationale_fit``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fgssl.errors import ConfigError


class RationaleBranch(nn.Module):
    """``Conv2d(C->K, 1x1, bias=False) -> BatchNorm2d(K) -> ReLU -> max over K``."""

    def __init__(self, in_channels: int, projections: int = 32):
        super().__init__()
        if projections < 1:
            raise ConfigError(f"rationale.projections={projections} must be >= 1")
        self.proj = nn.Conv2d(in_channels, projections, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(projections)

    @property
    def projections(self) -> int:
        return self.proj.out_channels

    def forward(self, A: Tensor) -> Tensor:
        """(N, C, h, w) -> raw map M (N, h, w)."""
        # torch.max (not amax) so that the gradient goes to one arg-max map, as in the code.
        return F.relu(self.bn(self.proj(A))).max(dim=1).values

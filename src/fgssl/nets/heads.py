"""Projection and prediction heads.

* MoCo v2 projector (Chen et al. 2020, "Improved Baselines with Momentum
  Contrastive Learning", Sec. 2): ``Linear(C, C) - ReLU - Linear(C, 256)``.
* SimSiam projector and predictor (Chen & He 2021, "Exploring Simple Siamese
  Representation Learning", Sec. 4.1): a 3-layer MLP with BN on every layer,
  including the output (no ReLU there), and a ``d - d/4 - d`` bottleneck
  predictor with BN + ReLU on its hidden layer only.
"""

from __future__ import annotations

from torch import nn


class MoCoV2Projector(nn.Sequential):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 256):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class SimSiamProjector(nn.Sequential):
    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False),
        )


class SimSiamPredictor(nn.Sequential):
    def __init__(self, dim: int = 2048, hidden_dim: int = 512):
        super().__init__(
            nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
        )

"""The toy plug-in's regularizer: ``L_norm = mean_i (||z_i|| - target)^2`` over the first view's features."""

from __future__ import annotations

from typing import Dict, Tuple

from torch import Tensor

from fgssl.methods.base import Regularizer, StepState


class FeatureNormPenalty(Regularizer):
    def __init__(self, cfg, method):
        super().__init__()
        self.weight = float(cfg.weight)
        self.target = float(cfg.target)

    def loss_terms(self, method, state: StepState) -> Dict[str, Tuple[float, Tensor]]:
        z = state.z[0]
        return {"L_norm": (self.weight, (z.norm(dim=1) - self.target).square().mean())}

"""SimSiam (Chen & He 2021) on the shared method contract.

Projector ``C-2048-2048`` with BN on all three layers, predictor ``2048-512-2048``,
symmetric negative cosine with stop-gradient (``losses/negative_cosine.py``), the
predictor at a fixed lr. Logs the collapse indicator ``std(normalize(z))`` every
step: about ``1/sqrt(d)`` when healthy, towards 0 when the output collapses.
The ResNet starts with ``zero_init_residual=True``, as in the reference code
(``backbone.zero_init_residual`` overrides it).
"""

from __future__ import annotations

from typing import List

import torch.nn.functional as F
from torch import Tensor

from fgssl.losses.negative_cosine import simsiam_loss
from fgssl.methods.base import SSLMethod, SSLOutput
from fgssl.nets.heads import SimSiamPredictor, SimSiamProjector


def collapse_indicator(z: Tensor) -> Tensor:
    """Mean over dimensions of the per-dimension std of the L2-normalised outputs."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


class SimSiam(SSLMethod):
    #: The SimSiam reference code builds its encoder with ``zero_init_residual=True``.
    ZERO_INIT_RESIDUAL = True

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.method
        self.projector = SimSiamProjector(self.feat_dim, m.proj_hidden or m.proj_dim, m.proj_dim)
        self.predictor = SimSiamPredictor(m.proj_dim, m.pred_hidden)

    def learnable_params(self) -> List[dict]:
        return [
            {"name": "backbone", "params": list(self.backbone.parameters())},
            {"name": "projector", "params": list(self.projector.parameters())},
            {"name": "predictor", "params": list(self.predictor.parameters()),
             "fixed_lr": bool(self.cfg.method.fixed_pred_lr)},
        ]

    def ssl_forward(self, x1: Tensor, x2: Tensor, z1: Tensor, z2: Tensor) -> SSLOutput:
        h1, h2 = self.projector(z1), self.projector(z2)
        p1, p2 = self.predictor(h1), self.predictor(h2)
        loss = simsiam_loss(p1, p2, h1, h2)
        return SSLOutput(loss=loss, logs={"collapse_std": collapse_indicator(h1)})

"""Symmetric negative cosine loss of SimSiam (Chen & He 2021, Eqs. 1-2).

    D(p, z) = - <p / ||p||, z / ||z||>
    L = 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1))
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """``D(p, sg(z))`` averaged over the batch; ``z`` receives no gradient."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)

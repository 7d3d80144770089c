"""InfoNCE with a queue of negatives (MoCo, He et al. 2020, Eq. 1).

    L_q = -log  exp(q.k+ / T) / ( exp(q.k+ / T) + sum_{k- in queue} exp(q.k- / T) )

``q`` and ``k`` are L2-normalised; the positive logit sits at index 0 of a
(K+1)-way cross entropy, exactly as in the MoCo reference code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def infonce_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Return the (N, 1+K) logits: column 0 is the positive pair, the rest the queue.

    ``q``, ``k``: (N, D) L2-normalised; ``queue``: (K, D) L2-normalised negatives.
    """
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.t()
    return torch.cat([pos, neg], dim=1) / temperature


def infonce_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Mean InfoNCE loss over the batch (keys ``k`` are treated as constants)."""
    logits = infonce_logits(q, k.detach(), queue.detach(), temperature)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits.float(), labels)

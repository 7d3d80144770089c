"""Weighted kNN classifier (Wu et al. 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", Eq. 5): each of the k nearest memory
items votes for its class with weight ``exp(s / t)``, ``s`` the cosine similarity.
Defaults k = 200, t = 0.1 as in the LCR code's kNN monitor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def weighted_knn_predict(query: Tensor, memory: Tensor, memory_labels: Tensor, num_classes: int,
                         k: int = 200, t: float = 0.1, chunk: int = 1024) -> Tensor:
    """Predicted class of each row of ``query`` (features are L2-normalised here)."""
    query = F.normalize(query.float(), dim=1)
    memory = F.normalize(memory.float().to(query.device), dim=1)
    memory_labels = memory_labels.to(query.device)
    k = min(k, memory.shape[0])
    preds = []
    for q in query.split(chunk):
        sim, idx = (q @ memory.t()).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, memory_labels[idx], (sim / t).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)

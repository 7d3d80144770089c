"""Leave-one-out retrieval metrics on the test split (SPEC section 3).

Every test item queries all *other* test items by cosine similarity on
L2-normalised features.

* rank-k: fraction of queries with at least one same-class item in the top k;
* AP = (1/M) * sum_k k / r_k over the ranks r_k of the query's M same-class
  items; mAP is the mean over queries that have at least one same-class item.

The similarity matrix is processed in row chunks, so memory stays bounded by
``chunk x N`` whatever N is.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def retrieval_metrics(feats: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5), chunk: int = 1024) -> Dict[str, float]:
    """Return ``{"rank1": %, "rank5": %, "map": %}`` (percentages)."""
    x = F.normalize(feats.float(), dim=1)
    y = labels.to(x.device)
    n = x.shape[0]
    hits = {k: 0.0 for k in ks}
    ap_sum, ap_count = 0.0, 0
    for start in range(0, n, chunk):
        q = x[start:start + chunk]
        rows = torch.arange(start, start + q.shape[0], device=x.device)
        sim = q @ x.t()
        sim[torch.arange(q.shape[0], device=x.device), rows] = float("-inf")  # leave the query out
        order = sim.argsort(dim=1, descending=True)[:, : n - 1]
        match = (y[order] == y[rows].unsqueeze(1)).float()
        for k in ks:
            hits[k] += match[:, :k].amax(dim=1).sum().item()
        m = match.sum(dim=1)
        ranks = torch.arange(1, n, device=x.device, dtype=torch.float32)
        precision_at_hits = match.cumsum(dim=1) / ranks * match
        valid = m > 0
        ap = precision_at_hits.sum(dim=1)[valid] / m[valid]
        ap_sum += ap.sum().item()
        ap_count += int(valid.sum().item())
    out = {f"rank{k}": 100.0 * hits[k] / n for k in ks}
    out["map"] = 100.0 * ap_sum / max(1, ap_count)
    return out

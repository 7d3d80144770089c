"""Leave-one-out retrieval metrics on the test split (docs/method.md, evaluation).

Every test item queries all *other* test items by cosine similarity on
L2-normalised features.

* rank-k: fraction of queries with at least one same-class item in the top k;
* AP = (1/M) * sum_k k / r_k over the ranks r_k of the query's M same-class
  items; mAP is the mean of AP over the queries.

Every metric uses the same queries: those with at least one other same-class item (a query
without one has no right answer, so it counts in neither rank-k nor mAP). On a full test set
every class has several images; on a subset (``eval.max_images``) some may have one, and
``no_match`` reports how many queries were left out that way.

No row of the similarity matrix is ever sorted.  For a query with M matches
sorted by similarity ``p_1 >= ... >= p_M``, the rank of the k-th match is
``r_k = 1 + #{items more similar than p_k}``; the counts are a histogram of where each
item falls among the query's M sorted match similarities (``_gaps_histogram``:
a few linear passes over the row, an exact search only for the items that share
a histogram level with a match).  Besides the matrix product that is O(N) per
row instead of the O(N log N) of a full sort.
Ties are ranked as a full sort that puts, among equal similarities, the other
classes' items before the query's matches, and the matches in a row: the k-th
match has rank ``r_k = k + #{non-matches at least as similar}``, so ``r_k >= k``
and AP <= 1 always (tied or all-zero features included).

The similarity matrix is processed in row chunks, so memory stays bounded by
``chunk x N`` whatever N is.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LEVELS = 4096  # histogram levels per row, spread between its lowest match and its maximum


def _gaps_histogram(sim: Tensor, pos: Tensor, pad: Tensor, right: bool = False) -> Tensor:
    """``hist[i, g]`` = number of items j of row i with exactly g entries of ``pos[i]`` strictly below ``sim[i, j]``
    (``right=True``: at or below).

    Equivalent to a histogram of ``searchsorted(pos, sim)`` but cheaper: each row's range from its
    lowest match to its maximum is cut into uniform levels (level 0 holds everything
    below the lowest match); an item whose level holds no match gets the gap of its whole level (a
    prefix count), and only the few items that share a level with a match are searched exactly.
    ``pos`` is ascending per row with ``pad[i]`` entries of ``-inf`` padding first.
    """
    c, m_max = pos.shape
    dev = sim.device
    ones = torch.ones(1, device=dev, dtype=torch.float32)
    hi = sim.amax(dim=1, keepdim=True)
    lo = pos.gather(1, pad.clamp(max=m_max - 1))              # lowest real match per row
    lo = torch.where(pad < m_max, lo, hi)                     # (rows without a match: any finite value)
    scale = (LEVELS - 1) / (hi - lo).clamp(min=1e-12)

    def level(v: Tensor) -> Tensor:  # v < lo -> 0; [lo, hi] -> 1..LEVELS-1
        return torch.addcmul(1.0 - lo * scale, v, scale).clamp_(0, LEVELS - 1).long()

    real = (torch.arange(m_max, device=dev).unsqueeze(0) >= pad).float()
    per_level = torch.zeros(c, LEVELS, device=dev).scatter_add_(1, level(pos), real)
    below = (per_level.cumsum(1) - per_level).long() + pad  # matches (and padding) in lower levels
    shared = per_level > 0
    lev = level(sim)
    items = torch.zeros(c, LEVELS, device=dev).scatter_add_(1, lev, ones.expand_as(sim))
    hist = torch.zeros(c, m_max + 1, device=dev)
    hist.scatter_add_(1, below, items.masked_fill_(shared, 0.0))
    # exact gaps for the items in shared levels: one flat search, rows kept apart by an offset
    r, j = shared.gather(1, lev).nonzero(as_tuple=True)
    if r.numel():
        offset = 8.0 * torch.arange(c, device=dev, dtype=torch.float64).unsqueeze(1)
        flat_pos = (pos.double().clamp(min=-2.0) + offset).flatten()        # padding -> -2
        keys = sim[r, j].double().clamp(min=-3.0) + offset[r, 0]
        gap = torch.searchsorted(flat_pos, keys, right=right) - r * m_max
        hist.view(-1).scatter_add_(0, r * (m_max + 1) + gap, ones.expand_as(gap))
    return hist


def _chunk_stats(sim: Tensor, same: Tensor, ks: Sequence[int]) -> tuple[Dict[int, Tensor], Tensor, Tensor]:
    """Hits per k, AP sum and number of queries with a match, for one chunk of rows.

    ``sim`` (c x N) has the query itself already set to ``-inf``; ``same`` (c x N)
    marks the other items of the query's class.
    """
    m = same.sum(dim=1)                                   # matches per query
    m_max = int(m.max().item()) if m.numel() else 0
    if m_max == 0:
        return {k: sim.new_zeros(()) for k in ks}, sim.new_zeros(()), m.new_zeros(())
    neg_inf = torch.tensor(float("-inf"), device=sim.device, dtype=sim.dtype)
    # the M match similarities of each row, ascending, left-padded with -inf up to m_max
    pos = torch.where(same, sim, neg_inf).topk(m_max, dim=1, sorted=True).values.flip(1).contiguous()
    # hist[g]: non-matches with g matches (or padding) at or below them; the query and the matches
    # themselves (-inf here) have g = 0. A non-match ranks before the ascending match a iff its g > a.
    pad = (m_max - m).unsqueeze(1)                        # padded slots per row
    hist = _gaps_histogram(torch.where(same, neg_inf, sim), pos, pad, right=True)
    above = hist.flip(1).cumsum(1).flip(1)[:, 1:]         # non-matches at least as similar as match a
    slot = torch.arange(m_max, device=sim.device).unsqueeze(0)
    real = slot >= pad
    k_desc = (m_max - slot).float()                       # the ascending slot a holds the (m_max - a)-th best match
    ranks = k_desc + above                                # r_k = k + non-matches ranked before it (ties included)
    ap = torch.where(real, k_desc / ranks, torch.zeros_like(ranks)).sum(1)
    valid = m > 0
    ap_sum = (ap[valid] / m[valid].float()).sum()
    best_rank = ranks[:, -1]                              # rank of the most similar match
    hits = {k: ((best_rank <= k) & valid).sum() for k in ks}
    return hits, ap_sum, valid.sum()


@torch.no_grad()
def retrieval_metrics(feats: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5), chunk: int = 1024) -> Dict[str, float]:
    """Return ``{"rank1": %, "rank5": %, "map": %, "queries": Q, "no_match": n - Q}``: percentages over the
    ``Q`` queries that have at least one other same-class item, and how many queries had none."""
    x = F.normalize(feats.float(), dim=1)
    if not torch.isfinite(x).all():
        raise ValueError("retrieval_metrics: the features contain NaN or inf (a diverged model?)")
    y = labels.to(x.device)
    n = x.shape[0]
    hits = {k: 0.0 for k in ks}
    ap_sum, ap_count = 0.0, 0
    for start in range(0, n, chunk):
        q = x[start:start + chunk]
        c = q.shape[0]
        rows = torch.arange(start, start + c, device=x.device)
        sim = q @ x.t()
        sim[torch.arange(c, device=x.device), rows] = float("-inf")  # leave the query out
        same = y[rows].unsqueeze(1) == y.unsqueeze(0)
        same[torch.arange(c, device=x.device), rows] = False
        h, a, v = _chunk_stats(sim, same, ks)
        for k in ks:
            hits[k] += float(h[k])
        ap_sum += float(a)
        ap_count += int(v)
    out = {f"rank{k}": 100.0 * hits[k] / max(1, ap_count) for k in ks}  # the same queries as mAP
    out["map"] = 100.0 * ap_sum / max(1, ap_count)
    out["queries"] = float(ap_count)
    out["no_match"] = float(n - ap_count)
    return out

"""Retrieval at scale: :func:`fgssl.eval.retrieval.retrieval_metrics` on ``N x D`` random features (random
labels) against the bare similarity product ``X @ X.T``, median of interleaved repetitions."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Dict

from fgssl.bench.compose import compose, error_reason
from fgssl.bench.steps import sync


def time_retrieval(n: int, d: int, device: str, reps: int, chunk: int, classes: int) -> Dict[str, Any]:
    """Median time of ``retrieval_metrics`` vs the bare ``X @ X.T`` on ``n x d`` random features."""
    import torch
    import torch.nn.functional as F

    from fgssl.eval.retrieval import retrieval_metrics

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, d, generator=g).to(device)
    labels = torch.randint(0, max(1, classes), (n,), generator=g).to(device)
    x = F.normalize(feats, dim=1)

    def run_retrieval():
        try:
            return retrieval_metrics(feats, labels, chunk=chunk)
        except TypeError:  # a signature without ``chunk``
            return retrieval_metrics(feats, labels)

    def run_matmul():
        return x @ x.t()

    def timed(fn: Callable) -> float:
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        dt = time.perf_counter() - t0
        del out
        return dt

    timed(run_matmul)  # warm-up (allocations, kernels)
    timed(run_retrieval)
    t_mm, t_ret = [], []
    for _ in range(max(1, reps)):  # interleaved, so drifting load hits both alike
        t_mm.append(timed(run_matmul))
        t_ret.append(timed(run_retrieval))
    ms_ret, ms_mm = statistics.median(t_ret) * 1e3, statistics.median(t_mm) * 1e3
    return {"n": n, "d": d, "chunk": chunk, "classes": classes, "reps": max(1, reps),
            "ms_retrieval": ms_ret, "ms_matmul": ms_mm, "ratio": ms_ret / ms_mm if ms_mm > 0 else None}




def run_retrieval(a, conf, put: Callable[[Dict[str, Any]], None]) -> None:
    chunk = a.retrieval_chunk
    if chunk is None:
        with contextlib.suppress(Exception):
            chunk = int(compose(["logger=none"], conf).eval.retrieval_chunk)
    try:
        res = time_retrieval(a.retrieval_n, a.retrieval_d, a.device, a.retrieval_reps, chunk or 1024,
                             a.retrieval_classes)
    except Exception as e:  # noqa: BLE001
        put({"kind": "error", "part": "retrieval", "reason": error_reason(e)})
    else:
        put({"kind": "retrieval", "device": a.device, **res})

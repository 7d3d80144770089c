"""The evaluation suite run at the end of training and by ``evaluate.py``.

Features come through ``method.embed``; metrics are percentages:
``test/retrieval_rank1``, ``test/retrieval_rank5``, ``test/retrieval_map``,
``test/linear_top1`` (fast probe), ``test/knn_top1`` (weighted kNN, train as memory).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from fgssl import layout
from fgssl.errors import FgsslError
from fgssl.eval.features import extract_features
from fgssl.eval.knn import weighted_knn_predict
from fgssl.eval.linear import linear_probe
from fgssl.eval.retrieval import retrieval_metrics
from fgssl.fsio import atomic_write_text

METRIC_KEYS = ("test/retrieval_rank1", "test/retrieval_rank5", "test/retrieval_map", "test/linear_top1",
               "test/knn_top1")


def run_evaluation(method, dm, cfg, device: torch.device, progress: bool = True) -> Dict[str, float]:
    e = cfg.eval
    t0 = time.perf_counter()
    method = method.to(device).eval()
    if hasattr(dm, "use_device"):  # the device pipeline cuts the evaluation crops where the model is
        dm.use_device(device)
    mem_f, mem_y = extract_features(method, dm.memory_loader(), device, e.feature, "train features", progress)
    te_f, te_y = extract_features(method, dm.test_loader(), device, e.feature, "test features", progress)
    t_feat = time.perf_counter() - t0
    r = retrieval_metrics(te_f, te_y, chunk=e.retrieval_chunk)
    t_lin = time.perf_counter()
    lin = linear_probe(mem_f.cpu(), mem_y.cpu(), te_f.cpu(), te_y.cpu(), dm.num_classes,
                       list(e.linear_wd_grid), e.linear_max_iter, e.linear_folds)
    t_lin = time.perf_counter() - t_lin
    pred = weighted_knn_predict(te_f, mem_f, mem_y, dm.num_classes, e.knn_k, e.knn_t)
    knn = 100.0 * (pred == te_y).float().mean().item()
    out = {
        "test/retrieval_rank1": r["rank1"],
        "test/retrieval_rank5": r["rank5"],
        "test/retrieval_map": r["map"],
        "test/retrieval_queries": r["queries"],  # test images with another same-class image
        "test/retrieval_queries_without_match": r["no_match"],  # left out of every retrieval metric
        "test/linear_top1": lin["top1"],
        "test/knn_top1": knn,
        "test/linear_wd": lin["wd"],
        "test/num_train_images": float(len(mem_y)),
        "test/num_test_images": float(len(te_y)),
        "test/feature_seconds": t_feat,
        "test/linear_seconds": t_lin,  # the fast probe alone, on cached features
    }
    if e.protocol == "linear_sgd":
        from fgssl.eval.linear_sgd import linear_sgd

        out.update(linear_sgd(method, dm, cfg, device, progress))
    elif e.protocol != "fast":
        raise FgsslError(f"eval.protocol={e.protocol!r} must be 'fast' or 'linear_sgd'")
    if e.localisation and cfg.data.name == "cub":
        from fgssl.eval.localisation import localisation_scores

        out.update(localisation_scores(method, dm, cfg.data.root, device, e.max_images, e.part_radius))
    out["test/eval_seconds"] = time.perf_counter() - t0
    return out


def format_table(metrics: Dict[str, float], title: Optional[str] = None) -> str:
    rows = [(k, f"{metrics[k]:.2f}") for k in METRIC_KEYS if k in metrics]
    rows += [(k, f"{v:.4g}") for k, v in metrics.items() if k not in METRIC_KEYS]
    w = max(len(k) for k, _ in rows)
    v = max(len(x) for _, x in rows)
    line = f"+-{'-' * w}-+-{'-' * v}-+"
    out = [line]
    if title:  # a long title (a checkpoint path) wraps inside the border instead of widening every row
        import textwrap

        wrapped = textwrap.wrap(title, w + v + 3, break_on_hyphens=False) or [""]
        out += [f"| {t.ljust(w + v + 3)} |" for t in wrapped] + [line]
    out += [f"| {k.ljust(w)} | {x.rjust(v)} |" for k, x in rows] + [line]
    return "\n".join(out)


def write_metrics(metrics: Dict[str, float], out_dir: Path, extra: Optional[dict] = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / layout.METRICS
    payload = dict(metrics)
    if extra:
        payload.update(extra)
    # a temporary file renamed over metrics.json; a full disk is one clear error (fgssl.fsio)
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True))

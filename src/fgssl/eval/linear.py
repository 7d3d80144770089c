"""Fast linear probe on cached frozen features (docs/method.md, evaluation; our default).

Multinomial logistic regression ``Linear(C, classes)`` fitted by full-batch
L-BFGS on the L2-normalised cached features. The weight decay is chosen from a
grid by stratified k-fold cross-validation on train (``folds``; 1 = one 10 %
hold-out split), then the probe is refitted on all of train and scored on test
(top-1 via torchmetrics).

Why k folds: with ~40 training images per class, one 10 % hold-out split has ~4
images per class, and which weight decay wins depends on the split. Measured on
the cpu_evidence SimSiam checkpoint (cub53): five split seeds chose wd 0, 1e-5
or 1e-4 and test top-1 14.98, 19.23 or 17.75 (docs/evidence.md); the whole
"swing" of that run's linear curve was this choice.
"""

from __future__ import annotations

from typing import Dict, Iterator, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy


def fit_logreg(x: Tensor, y: Tensor, num_classes: int, wd: float, max_iter: int = 200) -> torch.nn.Linear:
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + 0.5 * wd * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def _shuffled_classes(y: Tensor, seed: int) -> Iterator[Tensor]:
    """Each class's row indices, shuffled, class by class (one generator: the same draws for a given ``y``)."""
    g = torch.Generator().manual_seed(seed)
    for c in y.unique():
        idx = (y == c).nonzero().flatten().cpu()
        yield idx[torch.randperm(len(idx), generator=g)]


def stratified_split(y: Tensor, frac: float = 0.1, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Indices (fit, held-out) with about ``frac`` of every class held out."""
    fit, held = [], []
    for idx in _shuffled_classes(y, seed):
        n_held = int(round(frac * len(idx))) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        fit.append(idx[n_held:])
    return torch.cat(fit), torch.cat(held)


def stratified_folds(y: Tensor, k: int, seed: int = 0) -> Tensor:
    """Fold number (0..k-1) of every row: each class's rows, shuffled, are dealt round-robin to the folds.
    A class's only image gets -1: it is never held out (as in :func:`stratified_split`), so no fold is left
    without it in the fit."""
    fold = torch.empty(len(y), dtype=torch.long)
    for idx in _shuffled_classes(y, seed):
        fold[idx] = torch.arange(len(idx)) % k if len(idx) > 1 else -1
    return fold


def _held_out_splits(y: Tensor, folds: int):
    """(fit, held-out) index pairs: k stratified folds, or (folds=1) one 10 % split; a pair with an empty
    side is left out (e.g. ``eval.max_images`` smaller than the number of classes)."""
    if folds <= 1:
        pairs = [stratified_split(y)]
    else:
        fold = stratified_folds(y, folds)
        pairs = [((fold != f).nonzero().flatten(), (fold == f).nonzero().flatten()) for f in range(folds)]
    return [(f, h) for f, h in pairs if len(f) > 0 and len(h) > 0]


def _accuracy(lin: torch.nn.Linear, x: Tensor, y: Tensor, num_classes: int) -> float:
    with torch.no_grad():
        pred = lin(x).argmax(dim=1)
    return 100.0 * multiclass_accuracy(pred, y, num_classes=num_classes, average="micro").item()


def _held_out_accuracy(x: Tensor, y: Tensor, splits, num_classes: int, wd: float, max_iter: int) -> float:
    """Held-out top-1 of a probe at weight decay ``wd``, pooled over the splits (each fitted on its own fit set)."""
    hits = sum(_accuracy(fit_logreg(x[f], y[f], num_classes, wd, max_iter), x[h], y[h], num_classes) * len(h)
               for f, h in splits)
    return hits / sum(len(h) for _, h in splits)


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                 wd_grid: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3), max_iter: int = 200,
                 folds: int = 5) -> Dict[str, float]:
    """Return ``{"top1": %, "wd": chosen weight decay}``; the wd with the best mean held-out accuracy over
    the folds wins (the first in grid order on a tie)."""
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    splits = _held_out_splits(train_y, folds)
    best_wd, best_acc = wd_grid[0], -1.0
    if len(wd_grid) > 1 and splits:
        for wd in wd_grid:
            acc = _held_out_accuracy(train_x, train_y, splits, num_classes, wd, max_iter)
            if acc > best_acc:
                best_wd, best_acc = wd, acc
    lin = fit_logreg(train_x, train_y, num_classes, best_wd, max_iter)
    return {"top1": _accuracy(lin, test_x, test_y, num_classes), "wd": float(best_wd)}

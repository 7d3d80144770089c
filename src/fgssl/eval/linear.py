"""Fast linear probe on cached frozen features (docs/method.md, evaluation; our default).

Multinomial logistic regression ``Linear(C, classes)`` fitted by full-batch
L-BFGS on the L2-normalised cached features. The weight decay is chosen from a
grid on a stratified 10 % split of train, then the probe is refitted on all of
train and scored on test (top-1 via torchmetrics).
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

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


def stratified_split(y: Tensor, frac: float = 0.1, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Indices (fit, held-out) with about ``frac`` of every class held out."""
    g = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for c in y.unique():
        idx = (y == c).nonzero().flatten().cpu()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_held = int(round(frac * len(idx))) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        fit.append(idx[n_held:])
    return torch.cat(fit), torch.cat(held)


def _accuracy(lin: torch.nn.Linear, x: Tensor, y: Tensor, num_classes: int) -> float:
    with torch.no_grad():
        pred = lin(x).argmax(dim=1)
    return 100.0 * multiclass_accuracy(pred, y, num_classes=num_classes, average="micro").item()


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                 wd_grid: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3), max_iter: int = 200) -> Dict[str, float]:
    """Return ``{"top1": %, "wd": chosen weight decay}``."""
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    fit_idx, held_idx = stratified_split(train_y)
    best_wd, best_acc = wd_grid[0], -1.0
    if len(wd_grid) > 1 and len(held_idx) > 0:
        for wd in wd_grid:
            lin = fit_logreg(train_x[fit_idx], train_y[fit_idx], num_classes, wd, max_iter)
            acc = _accuracy(lin, train_x[held_idx], train_y[held_idx], num_classes)
            if acc > best_acc:
                best_wd, best_acc = wd, acc
    lin = fit_logreg(train_x, train_y, num_classes, best_wd, max_iter)
    return {"top1": _accuracy(lin, test_x, test_y, num_classes), "wd": float(best_wd)}

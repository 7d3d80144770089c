"""The SGD linear protocol of the LCR code (docs/method.md, evaluation).

Frozen encoder in eval mode, ``Linear(C, classes)`` initialised as the code does
(weights N(0, 0.01), bias 0) on the feature the code feeds its classifier: the
L2-normalised evaluation feature ``method.embed`` -- for an LCR model the
attention-pooled ``GAP(A * att)`` (the code's ``bp_out_feat``), otherwise the
GAP of layer4; ``eval.feature=gap`` forces GAP. SGD lr 30 / momentum 0.9 / wd 0 / batch 256, 100 epochs
with the lr x0.1 at epochs 60 and 80; RandomResizedCrop + HFlip on train
images, Resize + CenterCrop on test. Top-1 on test after every epoch; the
*last*-epoch number is the primary result, the best epoch is reported too and
labelled as such (the authors report the best epoch).
"""

from __future__ import annotations

import time
from typing import Dict

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fgssl.data.datamodule import ImageDataset
from fgssl.data.transforms import linear_train_transform
from fgssl.workers import QuietWorkerInit


def linear_head(dim: int, num_classes: int) -> torch.nn.Linear:
    """``Linear(dim, classes)`` with the LCR code's init: weights N(0, 0.01), bias 0."""
    head = torch.nn.Linear(dim, num_classes)
    torch.nn.init.normal_(head.weight, mean=0.0, std=0.01)
    torch.nn.init.zeros_(head.bias)
    return head


def linear_sgd(method, dm, cfg, device: torch.device, progress: bool = True) -> Dict[str, float]:
    e = cfg.eval
    t0 = time.perf_counter()
    method = method.to(device).eval()
    train_set = ImageDataset(dm.memory_set.samples, linear_train_transform(cfg.data.image_size),
                             on_bad=cfg.data.on_bad_image, bad_log=dm.bad_log)
    nw = cfg.data.num_workers
    train_loader = DataLoader(train_set, batch_size=e.sgd_batch_size, shuffle=True, num_workers=nw,
                              persistent_workers=nw > 0, drop_last=False, worker_init_fn=QuietWorkerInit())
    test_loader = dm.test_loader()
    torch.manual_seed(cfg.seed)
    head = linear_head(method.feat_dim, dm.num_classes).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=e.sgd_lr, momentum=0.9, weight_decay=e.sgd_weight_decay)
    milestones = [int(round(m * e.sgd_epochs)) for m in e.sgd_milestones]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)

    # the test features never change: extract them once
    with torch.no_grad():
        test = [(method.embed(x.to(device), e.feature), y.to(device)) for x, y in test_loader]
    accs = []
    epochs = range(e.sgd_epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc="linear SGD", leave=False, dynamic_ncols=True)
    for _ in epochs:
        head.train()
        for x, y in train_loader:
            with torch.no_grad():
                f = method.embed(x.to(device), e.feature)
            loss = F.cross_entropy(head(f), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        head.eval()
        with torch.no_grad():
            correct = sum((head(f).argmax(1) == y).sum().item() for f, y in test)
        accs.append(100.0 * correct / sum(len(y) for _, y in test))
        if progress:
            epochs.set_postfix(top1=f"{accs[-1]:.2f}")
    best = max(range(len(accs)), key=accs.__getitem__)
    return {
        "test/linear_sgd_top1_last": accs[-1],
        "test/linear_sgd_top1_best": accs[best],
        "test/linear_sgd_best_epoch": float(best + 1),
        "test/linear_sgd_seconds": time.perf_counter() - t0,
    }

"""Optimizers and the learning-rate schedule of every method (``SSLMethod.configure_optimizers``).

SGD over the named parameter groups of the method and its regularizers (per-group lr, weight decay and
fixed-lr flag), an Adam optimizer for the groups that ask for it (SYN's decoder), and per step a linear
warm-up followed by a half-cosine to 0 (MoCo v2 / SimSiam: cosine schedule; lr scaled as ``lr * batch / 256``).
"""

from __future__ import annotations

import math
from typing import List

import torch


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """lr multiplier: linear warm-up over ``warmup`` steps, then half-cosine to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def all_param_groups(method) -> List[dict]:
    """The method's groups and every regularizer's, checked for overlap; empty groups dropped."""
    groups = list(method.learnable_params())
    for reg in method.regularizers:
        groups += reg.param_groups(method)
    seen: set = set()
    for g in groups:
        ids = {id(p) for p in g["params"]}
        if ids & seen:
            raise RuntimeError(f"parameter group {g['name']!r} overlaps another group")
        seen |= ids
    return [g for g in groups if g["params"]]


def steps_per_epoch(trainer) -> int:
    """Optimizer steps per epoch, from the datamodule's size (drop_last) and limit_train_batches.

    Not ``trainer.estimated_stepping_batches``: that builds the train loader before a checkpoint is
    restored, so a resumed run would never receive the loader's saved mid-epoch position.
    """
    dm = trainer.datamodule
    if dm is None or not hasattr(dm, "train_set"):  # loaders given directly (benchmarks)
        return max(1, int(trainer.estimated_stepping_batches) // max(1, trainer.max_epochs))
    from fgssl.data.sampling import global_batches

    n = global_batches(len(dm.train_set), dm.cfg.batch_size, trainer.world_size)
    limit = trainer.limit_train_batches
    n = min(n, int(limit)) if isinstance(limit, int) else int(n * limit)
    return max(1, n)


def configure(method, base_lr: float):
    """``(optimizers, schedulers)`` for Lightning: SGD (and Adam if asked) with warm-up + cosine per step."""
    m = method.cfg.method
    sgd, adam = [], []
    for g in all_param_groups(method):
        g = dict(g)
        kind = g.pop("optimizer", "sgd")
        g.setdefault("lr", base_lr if kind == "sgd" else 1e-4)
        g.setdefault("weight_decay", m.weight_decay if kind == "sgd" else 0.0)
        g.setdefault("fixed_lr", False)
        (sgd if kind == "sgd" else adam).append(g)
    per_epoch = steps_per_epoch(method.trainer)
    total = max(1, per_epoch * max(1, method.trainer.max_epochs))
    warmup = int(round(m.warmup_epochs * per_epoch))

    def lam(fixed: bool):
        return (lambda s: 1.0) if fixed else (lambda s: warmup_cosine(s, total, warmup))

    opts = []
    if sgd:
        opts.append(torch.optim.SGD(sgd, lr=base_lr, momentum=m.sgd_momentum))
    if adam:
        opts.append(torch.optim.Adam(adam, lr=adam[0]["lr"]))
    scheds = [{"scheduler": torch.optim.lr_scheduler.LambdaLR(o, [lam(g["fixed_lr"]) for g in o.param_groups]),
               "interval": "step"} for o in opts]
    return opts, scheds

"""Keep BatchNorm running statistics out of extra encoder passes.

Only the two real augmented views of a training step may move a BatchNorm layer's
``running_mean`` / ``running_var`` / ``num_batches_tracked``: those buffers normalise
the real test images at evaluation. Every other pass through an encoder -- SYN's
synthesized pair, the warm start of SYN's statistics, Grad-CAM for figures or
localisation -- runs inside :func:`bn_stats_kept`. Inside, a layer in train mode
still normalises with its own batch statistics (the forward and backward are
unchanged), and on exit the running buffers are exactly as they were.

torch has no switch for "batch statistics in the forward, but do not update the
running ones" (``track_running_stats=False`` also changes eval-mode behaviour, and
``torch.func.replace_all_batch_norm_modules_`` is permanent), hence this small
context manager. It covers ``SyncBatchNorm`` and fgssl's ``GlobalBatchNorm`` too
(both subclass ``_BatchNorm``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def bn_buffers(*modules: nn.Module) -> List[Tuple[nn.Module, str, Tensor]]:
    """``(layer, name, buffer)`` of every BatchNorm running buffer under ``modules`` (each layer once)."""
    seen, out = set(), []
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, _BatchNorm) and id(m) not in seen:
                seen.add(id(m))
                for name in _BUFFERS:
                    buf = getattr(m, name, None)
                    if isinstance(buf, Tensor):
                        out.append((m, name, buf))
    return out


@contextmanager
def bn_stats_kept(*modules: nn.Module) -> Iterator[None]:
    """Keep every BatchNorm running buffer under ``modules`` as it is (see the module docstring).

    Inside the block each layer's ``momentum`` is 0, so a train-mode forward computes
    ``running = (1 - 0) * running + 0 * batch``, which leaves the running mean and variance
    bit for bit as they were (for finite batch statistics); on exit every buffer that did
    change (``num_batches_tracked``; a layer that recomputes its buffers in its own way) is
    written back. Why not simply copy every buffer back: a train-mode ``batch_norm`` hands
    the running buffers to its backward, so writing them in place before that backward runs
    fails autograd's version check; swapping the tensors instead would defeat
    ``torch.compile``'s guards on the module's buffers.
    """
    entries = bn_buffers(*modules)
    layers = {id(m): (m, m.momentum) for m, _, _ in entries}
    saved = [(buf, buf.detach().clone()) for _, _, buf in entries]
    for layer, _ in layers.values():
        layer.momentum = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, momentum in layers.values():
                layer.momentum = momentum
            for buf, old in saved:
                # Native BatchNorm with momentum 0 leaves mean and variance bit for bit (no write, so
                # no autograd version bump); num_batches_tracked, and a layer that recomputes its
                # buffers itself (e.g. a split BatchNorm averaging its groups), are written back.
                if not torch.equal(buf, old):
                    buf.copy_(old)


@contextmanager
def bn_per_chunk(*modules: nn.Module, chunks: int = 2) -> Iterator[None]:
    """Inside the block, a train-mode BatchNorm layer normalises each of ``chunks`` equal slices of
    its batch with that slice's own statistics.

    One encoder pass over ``cat([x1, x2])`` then computes exactly what two passes over ``x1`` and
    ``x2`` compute (each view keeps its own batch statistics, as in the methods' reference code),
    while the convolutions and linear layers run once on the joint batch, which is cheaper. Use it
    inside :func:`bn_stats_kept` (the running buffers would otherwise take ``chunks`` updates).
    """
    layers = list({id(m): m for m, _, _ in bn_buffers(*modules)}.values())

    def split_forward(layer):
        orig = layer.forward

        def forward(x: Tensor) -> Tensor:
            if not layer.training or x.shape[0] % chunks:
                return orig(x)
            return torch.cat([orig(part) for part in x.chunk(chunks)])

        return forward

    for layer in layers:
        layer.forward = split_forward(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward

"""Split BatchNorm: the per-device BatchNorm of a multi-GPU run, simulated on one device.

The MoCo papers train on 8 GPUs with plain (per-GPU) BatchNorm: every 32 images of a batch of
256 are normalised by their own statistics, and the keys are shuffled across GPUs first
("shuffle BN"), so a query and its key never share batch statistics and the network cannot
match them through the statistics alone. On one device the whole batch shares one set of
statistics. :class:`SplitBatchNorm2d` normalises each of ``splits`` interleaved groups of the
batch (samples ``g, g + splits, g + 2·splits, ...``) with that group's own statistics; the running
statistics are the average of the groups' updates; in eval mode it is a plain BatchNorm2d. With
:meth:`fgssl.methods.mocov2.MoCoV2.keys` shuffling the key batch before the key encoder, this is
shuffle BN on one device (the MoCo authors' own single-GPU demo does the same). Same parameters,
buffers and ``state_dict`` keys as ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SplitBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, splits: int, **kw):
        super().__init__(num_features, **kw)
        self.splits = int(splits)

    def forward(self, x: Tensor) -> Tensor:
        g = self.splits
        if not self.training or g <= 1 or x.shape[0] % g:
            return super().forward(x)  # eval mode (running stats), or a batch that does not split evenly
        n, c, h, w = x.shape
        mean, var = self.running_mean.repeat(g), self.running_var.repeat(g)
        out = F.batch_norm(x.reshape(n // g, c * g, h, w), mean, var, self.weight.repeat(g), self.bias.repeat(g),
                           True, self.momentum if self.momentum is not None else 0.1, self.eps)
        self.running_mean.copy_(mean.view(g, c).mean(0))
        self.running_var.copy_(var.view(g, c).mean(0))
        self.num_batches_tracked.add_(1)
        return out.view(n, c, h, w)


def convert_to_split_bn(module: nn.Module, splits: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` under ``module`` by a :class:`SplitBatchNorm2d` (weights kept)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = SplitBatchNorm2d(child.num_features, splits, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_to_split_bn(child, splits)
    return module

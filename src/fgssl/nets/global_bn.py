"""BatchNorm over the global batch on any backend (CPU/gloo included).

torch's ``SyncBatchNorm`` only runs on GPUs. :class:`GlobalBatchNorm` computes the batch
statistics from per-process sums all-reduced with the autograd-aware
``torch.distributed.nn.functional.all_reduce``, so forward, backward and the running
statistics are those of one process holding the whole global batch (up to float summation
order). Without an initialised process group, or with one process, it is plain BatchNorm.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Drop-in for ``nn.BatchNorm1d/2d/3d`` (same parameters, buffers and state_dict keys)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.track_running_stats) or _world() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # autograd-aware (backward: all-reduce)

        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], dtype=torch.float32, device=x.device)
        with warnings.catch_warnings():  # "deprecated": its replacement has no autograd support yet
            warnings.simplefilter("ignore")
            packed = all_reduce(torch.cat([xf.sum(dims), xf.square().sum(dims), count]))
        c = x.shape[1]
        n = packed[-1]
        mean = packed[:c] / n
        var = (packed[c:2 * c] / n - mean.square()).clamp_min(0.0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1.0))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_to_global_bn(module: nn.Module) -> int:
    """Turn every BatchNorm layer of ``module`` into a :class:`GlobalBatchNorm` in place; returns
    how many. Parameters and buffers are kept, so checkpoints load either way."""
    count = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, (GlobalBatchNorm, nn.SyncBatchNorm)):
            m.__class__ = GlobalBatchNorm
            count += 1
    return count

"""MoCo v2 (Chen, Fan, Girshick, He 2020) on the shared method contract.

* query encoder = backbone + MLP projector; key encoder = their EMA copy (m = 0.999);
* InfoNCE against a queue of K negatives at temperature T = 0.2 (``losses/infonce.py``);
* one-directional loss by default, as in the MoCo v2 and LCR code (view 1 is the
  query, view 2 the key); ``method.symmetric=true`` symmetrises it (both views serve
  as query and key, at the cost of a second online pass with backward and a second
  key pass);
* the keys of the real second view are all-gathered across ranks, then enqueued
  (synthetic pairs from SYN call :meth:`ssl_loss` and never touch the queue).

BatchNorm: under DDP, ``trainer=ddp`` turns on SyncBatchNorm, which plays the role
of shuffle-BN (no rank computes BN statistics on its own keys only). On a single
device there is no shuffle-BN: query and key batches use their own batch statistics,
as in single-GPU MoCo reproductions.
"""

from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgssl.errors import FgsslError
from fgssl.losses.infonce import infonce_loss
from fgssl.methods.base import SSLMethod, SSLOutput
from fgssl.nets.heads import MoCoV2Projector
from fgssl.nets.split_bn import convert_to_split_bn


def default_queue_size(num_train: int, global_batch: int, cap: int = 65536) -> int:
    """min(cap, the largest multiple of the global batch <= the train size): at most one epoch of keys. A longer
    queue holds older keys of the very images being trained, negatives that are the positive itself; on
    cub53 the one-epoch queue beat the 4x queue on every metric at epoch 10 of the main job (docs/evidence.md)."""
    k = num_train // global_batch * global_batch
    return max(global_batch, min(cap, k))


class MoCoV2(SSLMethod):
    @classmethod
    def resolve_config(cls, cfg, num_train: int, world_size: int) -> None:
        """An automatic queue (``method.queue_size: null``): :func:`default_queue_size` of the data."""
        if not cfg.method.queue_size:
            cfg.method.queue_size = default_queue_size(num_train, cfg.data.batch_size * world_size)

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.method
        self.projector = MoCoV2Projector(self.feat_dim, m.proj_hidden or self.feat_dim, m.proj_dim)
        if m.bn_splits < 1 or cfg.data.batch_size % m.bn_splits:
            raise FgsslError(f"method.bn_splits={m.bn_splits} must be >= 1 and divide data.batch_size="
                             f"{cfg.data.batch_size} (1 = plain BatchNorm)")
        if m.bn_splits > 1:
            convert_to_split_bn(self.backbone, m.bn_splits)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projector_momentum = copy.deepcopy(self.projector)
        for p in list(self.backbone_momentum.parameters()) + list(self.projector_momentum.parameters()):
            p.requires_grad = False
        if m.queue_size is None or m.queue_size <= 0:
            raise ValueError("method.queue_size must be resolved first (MoCoV2.resolve_config, via "
                             "fgssl.factory.build_model)")
        self.register_buffer("queue", F.normalize(torch.randn(int(m.queue_size), m.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def learnable_params(self) -> List[dict]:
        return [
            {"name": "backbone", "params": list(self.backbone.parameters())},
            {"name": "projector", "params": list(self.projector.parameters())},
        ]

    def momentum_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.backbone_momentum), (self.projector, self.projector_momentum)]

    def ema_momentum(self) -> float:
        return float(self.cfg.method.ema_momentum)

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        perm = self.key_shuffle(x.shape[0], x.device)
        if perm is not None:  # shuffle BN: keys meet other images' statistics than their queries
            x = x[perm]
        with self.backbone_autocast():
            a = self.backbone_momentum.feature_map(x)
        k = F.normalize(self.projector_momentum(a.float().mean(dim=(2, 3))), dim=1)
        return k if perm is None else k[torch.argsort(perm)]

    def key_shuffle(self, n: int, device: torch.device) -> Optional[Tensor]:
        """The key batch's order under split BN (``method.bn_splits > 1``, training), else None. Drawn
        from (seed, training step), not from the global RNG: a resumed run draws the same order."""
        if self.cfg.method.bn_splits <= 1 or not self.backbone_momentum.training:
            return None
        g = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + self.train_steps)
        return torch.randperm(n, generator=g).to(device)

    def uses_online_z2(self) -> bool:
        return bool(self.cfg.method.symmetric)

    def ssl_forward(self, x1: Tensor, x2: Tensor, z1: Tensor, z2: Optional[Tensor]) -> SSLOutput:
        m = self.cfg.method
        q1 = F.normalize(self.projector(z1), dim=1)
        k2 = self.keys(x2)
        loss = infonce_loss(q1, k2, self.queue.clone(), m.temperature)
        if m.symmetric:
            q2 = F.normalize(self.projector(z2), dim=1)
            k1 = self.keys(x1)
            loss = 0.5 * (loss + infonce_loss(q2, k1, self.queue.clone(), m.temperature))
        return SSLOutput(loss=loss, keys=k2)

    def on_real_step(self, out: SSLOutput) -> None:
        if out.keys is not None:
            self.enqueue(out.keys)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """All-gather ``keys`` across ranks and write them at the queue pointer (wrapping)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            keys = self.all_gather(keys).flatten(0, 1)
        keys = keys.detach().to(self.queue.dtype)
        k = self.queue.shape[0]
        n = min(keys.shape[0], k)
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % k
        self.queue[idx] = keys[:n]
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % k)

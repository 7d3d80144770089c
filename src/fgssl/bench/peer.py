"""The peer row: MoCo v2 and SimSiam steps assembled from lightly's heads and losses (``pip install
lightly``, the optional ``bench`` extra) on the same torchvision backbone, image size, batch, precision and
device, against fgssl's base steps on the same synthetic batches, alternating round by round."""

from __future__ import annotations

import copy
import statistics
import sys
import traceback
from typing import Any, Callable, Dict, List

from fgssl.bench.compose import build_model, error_reason
from fgssl.bench.pipelines import one_directional_cfg
from fgssl.bench.steps import SyntheticBatches, fit_timed, time_module, time_training

Put = Callable[[Dict[str, Any]], None]


def _lightly_modules(cfg, feat_dim: int, backbone):
    """MoCo v2 / SimSiam LightningModules assembled from lightly's heads and losses, sized like fgssl's."""
    import pytorch_lightning as pl
    import torch
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import MoCoProjectionHead, SimSiamPredictionHead, SimSiamProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    m = cfg.method
    lr = m.lr * cfg.data.batch_size / 256.0

    class LightlyMoCo(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = MoCoProjectionHead(feat_dim, m.proj_hidden or feat_dim, m.proj_dim)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)
            self.criterion = NTXentLoss(temperature=m.temperature, memory_bank_size=(int(m.queue_size), m.proj_dim))

        def training_step(self, batch, batch_idx):  # one-directional, as fgssl's method.symmetric=false
            (x_q, x_k), _ = batch
            update_momentum(self.backbone, self.backbone_momentum, m=m.ema_momentum)
            update_momentum(self.projection_head, self.projection_head_momentum, m=m.ema_momentum)
            q = self.projection_head(self.backbone(x_q).flatten(1))
            with torch.no_grad():
                k = self.projection_head_momentum(self.backbone_momentum(x_k).flatten(1))
            return self.criterion(q, k)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=m.sgd_momentum, weight_decay=m.weight_decay)

    class LightlySimSiam(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimSiamProjectionHead(feat_dim, m.proj_hidden or m.proj_dim, m.proj_dim)
            self.prediction_head = SimSiamPredictionHead(m.proj_dim, m.pred_hidden, m.proj_dim)
            self.criterion = NegativeCosineSimilarity()

        def training_step(self, batch, batch_idx):
            (x0, x1), _ = batch
            z0 = self.projection_head(self.backbone(x0).flatten(1))
            z1 = self.projection_head(self.backbone(x1).flatten(1))
            p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
            return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=m.sgd_momentum, weight_decay=m.weight_decay)

    return LightlyMoCo() if m.name == "mocov2" else LightlySimSiam()


def _torchvision_backbone(name: str):
    """The torchvision ResNet without its classifier (fgssl's ``backbone.stem=imagenet`` is the same net)."""
    import torch
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    return torch.nn.Sequential(*list(net.children())[:-1]), net.fc.in_features



def _step_gflop(module, a, precision: str, meter) -> float:
    """GFLOP of one training step (forward and backward), counted by torch's ``FlopCounterMode`` (matmuls and
    convolutions): what the step computes, independent of the machine's load."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batches = SyntheticBatches(a.batch, a.image_size, 1, torch.device(a.device))
    with FlopCounterMode(display=False) as counter:
        fit_timed(module, batches, 1, 0, a.device, precision, meter)
    return counter.get_total_flops() / 1e9


def _gflops(a, cfg, meter) -> Dict[str, float]:
    precision = str(cfg.trainer.precision)
    backbone, dim = _torchvision_backbone(str(cfg.backbone.name))
    return {"gflop_fgssl": _step_gflop(build_model(cfg), a, precision, meter),
            "gflop_lightly": _step_gflop(_lightly_modules(cfg, dim, backbone), a, precision, meter)}


def _rounds(a, cfg, meter) -> Dict[str, List[float]]:
    """Step times of fgssl's and the lightly-built step over ``a.rounds`` rounds; the order alternates from
    round to round (fgssl first, then lightly first), so neither always runs first on a drifting load."""
    import pytorch_lightning as pl
    import torch

    def fgssl() -> List[float]:
        batches = SyntheticBatches(a.batch, a.image_size, a.warmup + a.steps, torch.device(a.device))
        return time_training(cfg, batches, a.steps, a.warmup, a.device, meter)["step_ms"]

    def lightly() -> List[float]:
        pl.seed_everything(int(cfg.seed), verbose=False)
        backbone, dim = _torchvision_backbone(str(cfg.backbone.name))
        peer = _lightly_modules(cfg, dim, backbone)
        batches = SyntheticBatches(a.batch, a.image_size, a.warmup + a.steps, torch.device(a.device))
        return time_module(peer, batches, a.steps, a.warmup, a.device, str(cfg.trainer.precision), meter)["step_ms"]

    rows: Dict[str, List[float]] = {"fgssl": [], "lightly": []}
    for r in range(a.rounds):
        order = (("fgssl", fgssl), ("lightly", lightly))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            rows[name] += fn()
    return rows


def run_peer(a, conf, meter, put: Put) -> None:
    try:
        import lightly  # noqa: F401
    except ImportError:
        put({"kind": "skip", "part": "peer", "reason": "lightly is not installed (pip install lightly)"})
        return
    for method in a.methods:
        cfg = one_directional_cfg(a, method, conf)
        if str(cfg.backbone.stem) != "imagenet":
            put({"kind": "skip", "method": method, "part": "peer", "reason": "the peer uses torchvision's stem"})
            continue
        try:
            rows = _rounds(a, cfg, meter)
            flops = _gflops(a, cfg, meter)
        except Exception as e:  # noqa: BLE001
            put({"kind": "error", "method": method, "part": "peer", "reason": error_reason(e)})
            traceback.print_exc(file=sys.stderr)
            continue
        ms_f, ms_l = statistics.median(rows["fgssl"]), statistics.median(rows["lightly"])
        put({"kind": "peer", "method": method, "symmetric": bool(cfg.method.get("symmetric")),
             "ms_fgssl": ms_f, "ms_lightly": ms_l, "ratio": ms_f / ms_l, "lightly": _version("lightly"),
             "fgssl_step_ms": rows["fgssl"], "lightly_step_ms": rows["lightly"], **flops,
             "flop_ratio": flops["gflop_fgssl"] / flops["gflop_lightly"]})
        print(f"fgssl.bench: {method} fgssl {ms_f:.1f} ms/step vs lightly-built {ms_l:.1f}", file=sys.stderr,
              flush=True)


def _version(pkg: str) -> str:
    from importlib.metadata import version

    try:
        return version(pkg)
    except Exception:  # noqa: BLE001
        return "?"

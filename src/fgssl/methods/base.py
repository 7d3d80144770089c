"""The method contract shared by every SSL method, and the regularizer contract.

A *method* (MoCo v2, SimSiam, ...) is a LightningModule over a backbone. It
implements :meth:`SSLMethod.ssl_forward` -- its own objective given the online
pooled features of two views -- and declares its parameter groups and, for
momentum methods, its online/target pairs. Everything else lives here:

* ``encode(x) -> (A, z)``: layer4 map and its GAP, both fp32 (the backbone may
  run under autocast; the heads and losses always run in fp32, so gradients
  w.r.t. ``A`` -- the Grad-CAM signal -- are fp32 too);
* ``ssl_loss(x1, x2)``: the method's objective on any two image batches (used by
  SYN for the synthesized pair; it never touches the MoCo queue, and it leaves every
  BatchNorm running statistic as it found it: only the real views move those);
* ``embed(x)``: the evaluation feature; a regularizer (LCR) may replace it;
* ``pair_gradcam(x)``: ``(A, dL/dA)`` of the method's loss on ``(x, hflip(x))`` in eval
  mode, touching no statistic; SYN's figures, LCR's maps, the localisation score and the
  paper figures all read Grad-CAM through it;
* the EMA of ``momentum_pairs()``;
* the training step, which computes ``L_C``, computes ``dL_C/dA`` once when a
  regularizer asks for it, adds every regularizer's weighted loss terms and
  logs each under its own name.

Elsewhere: optimizers and the lr schedule (``methods/optim.py``), the step counter and
training progress (``methods/progress.py``), the online kNN monitor (``callbacks/knn.py``).

A *regularizer* (SYN, LCR) is an ``nn.Module`` held in ``method.regularizers``.
It never needs code inside a method class; it plugs in through ``fgssl.regularizers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from fgssl.errors import ConfigError, FgsslError
from fgssl.methods import optim
from fgssl.methods.progress import epoch_fraction, train_steps
from fgssl.nets.backbones import build_backbone
from fgssl.nets.bn_state import bn_per_chunk, bn_stats_kept


@dataclass
class SSLOutput:
    """What a method's objective returns."""

    loss: Tensor
    #: Extra scalars to log under ``train/`` (e.g. SimSiam's collapse indicator).
    logs: Dict[str, Tensor] = field(default_factory=dict)
    #: Momentum keys produced by the real views, to be enqueued (MoCo).
    keys: Optional[Tensor] = None


@dataclass
class StepState:
    """Everything a regularizer may use in one training step."""

    x: Tuple[Tensor, Tensor]
    #: Online layer4 maps and pooled features; view 2's are None when the step does not encode it
    #: online (one-directional MoCo v2, see :meth:`SSLMethod.encodes_view2`).
    A: Tuple[Tensor, Optional[Tensor]]
    z: Tuple[Tensor, Optional[Tensor]]
    loss_c: Tensor
    #: ``dL_C/dA`` for both views (fp32, detached), or None if no regularizer asked.
    grad_A: Optional[Tuple[Tensor, Tensor]]
    epoch: int
    step: int
    #: Fraction of the current epoch done at the end of this step: training progress is
    #: ``epoch + epoch_frac`` epochs (the one source of progress-driven schedules, e.g. SYN's nu).
    epoch_frac: float = 1.0


class Regularizer(nn.Module):
    """Base class of the FGVR components that attach to any method."""

    #: Set True to receive ``StepState.grad_A``.
    needs_gradcam: bool = False
    #: The views whose ``dL_C/dA`` the regularizer reads (the others' entries may be zeros): autograd
    #: then only walks the paths to those maps.
    gradcam_views: Tuple[int, ...] = (0, 1)
    #: Set True when the regularizer reads the second view's online ``A``/``z`` even if the method's loss
    #: does not (one-directional MoCo v2 then encodes view 2 online too, which also moves BN statistics).
    needs_view2: bool = False

    def loss_terms(self, method: "SSLMethod", state: StepState) -> Dict[str, Tuple[float, Tensor]]:
        """Return ``{name: (weight, value)}``; the base adds ``weight * value`` to the loss."""
        raise NotImplementedError

    def param_groups(self, method: "SSLMethod") -> List[dict]:
        """Extra optimizer groups (same format as :meth:`SSLMethod.learnable_params`)."""
        return [{"name": type(self).__name__.lower(), "params": [p for p in self.parameters() if p.requires_grad]}]

    def embed(self, method: "SSLMethod", A: Tensor, z: Tensor) -> Optional[Tensor]:
        """Optionally replace the evaluation feature (LCR's attention pooling)."""
        return None

    def callbacks(self) -> List[pl.Callback]:
        return []

    @classmethod
    def resolve_config(cls, cfg: DictConfig, own: DictConfig) -> None:
        """Before the method is built: fill in values this regularizer decides (``own`` = its group)."""


class SSLMethod(pl.LightningModule):
    """Base LightningModule of every SSL method (see module docstring)."""

    #: The reference code's ``zero_init_residual`` (used when ``backbone.zero_init_residual`` is null).
    ZERO_INIT_RESIDUAL: bool = False

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.automatic_optimization = False
        b = cfg.backbone
        zir = self.ZERO_INIT_RESIDUAL if b.zero_init_residual is None else bool(b.zero_init_residual)
        self.backbone = build_backbone(b.name, b.stem, b.weights, zir)
        self.feat_dim = self.backbone.dim
        self.regularizers = nn.ModuleList()

    @classmethod
    def resolve_config(cls, cfg: DictConfig, num_train: int, world_size: int) -> None:
        """Fill in the config values derived from the data (e.g. MoCo's queue size) before building."""

    # ------------------------------------------------------------------ contract
    def encode(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Return the fp32 layer4 map ``A`` and ``z = GAP(A)``."""
        if self.cfg.trainer.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        a = self.backbone.feature_map(x).float()
        return a, a.mean(dim=(2, 3))

    def ssl_forward(self, x1: Tensor, x2: Tensor, z1: Tensor, z2: Tensor) -> SSLOutput:
        """The method's objective given the images and their online pooled features."""
        raise NotImplementedError

    def ssl_loss(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The method's objective on any two image batches.

        No queue update, and no BatchNorm running statistic changes: the forward uses the
        batches' own statistics (train mode), as a training step does, but the running
        buffers that normalise real test images are restored afterwards
        (:func:`fgssl.nets.bn_state.bn_stats_kept`). The online pass of ``x2`` is skipped
        when the objective does not read ``z2`` (one-directional MoCo v2); otherwise both
        images go through the backbone in one batched pass, each normalised with its own
        batch statistics (:func:`fgssl.nets.bn_state.bn_per_chunk`).
        """
        with bn_stats_kept(self):
            if not self.uses_online_z2():
                z1, z2 = self.encode(x1)[1], None
            elif x1.shape == x2.shape:
                # one encoder pass over both images, each normalised with its own batch statistics
                # (bn_per_chunk): the same values as two passes, at the cost of fewer, larger kernels
                with bn_per_chunk(self.backbone):
                    z1, z2 = self.encode(torch.cat([x1, x2]))[1].chunk(2)
            else:
                z1, z2 = self.encode(x1)[1], self.encode(x2)[1]
            return self.fp32(self.ssl_forward, x1, x2, z1, z2).loss

    def uses_online_z2(self) -> bool:
        """Whether :meth:`ssl_forward` reads the online feature of the second view."""
        return True

    def encodes_view2(self) -> bool:
        """Whether the training step runs the online encoder on the second view: when the objective reads
        it, or a regularizer asks (``needs_view2``). One-directional MoCo v2 does not, as in the MoCo v2
        code: its online BatchNorm statistics then come from the query view only."""
        return self.uses_online_z2() or any(getattr(r, "needs_view2", False) for r in self.regularizers)

    def gradient_views(self) -> Tuple[int, ...]:
        """The views (0 = first, 1 = second) whose online map ``A`` has a path to ``L_C``.

        Only their Grad-CAM carries signal: the other view's ``dL_C/dA`` is zero.
        """
        return (0, 1) if self.uses_online_z2() else (0,)

    def learnable_params(self) -> List[dict]:
        """Param groups: ``{"name", "params", ["lr"], ["weight_decay"], ["fixed_lr"], ["optimizer"]}``."""
        return [{"name": "backbone", "params": list(self.backbone.parameters())}]

    def momentum_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        """(online, target) module pairs updated by EMA after each step."""
        return []

    def ema_momentum(self) -> float:
        return 0.0

    @property
    def train_steps(self) -> int:
        """Training steps taken so far (not Lightning's ``global_step``, which counts each optimizer)."""
        return train_steps(self._trainer) if self._trainer is not None else 0

    def on_real_step(self, out: SSLOutput) -> None:
        """Hook after the real views' objective (MoCo enqueues its keys here)."""

    @torch.no_grad()
    def embed(self, x: Tensor, feature: str = "auto") -> Tensor:
        """L2-normalised evaluation feature of ``x`` (GAP, or a regularizer's pooling)."""
        a, z = self.encode(x)
        if feature == "auto":
            for reg in self.regularizers:
                f = reg.embed(self, a, z)
                if f is not None:
                    return F.normalize(f, dim=1)
        elif feature != "gap":
            raise ConfigError(f"eval.feature={feature!r} must be 'auto' or 'gap'")
        return F.normalize(z, dim=1)

    def pair_gradcam(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(A, dL/dA)`` of ``x``'s layer4 map under the method's own loss on the pair ``(x, hflip(x))``.

        Evaluated in eval mode (running BatchNorm statistics), with every BatchNorm buffer, the queue
        and the parameters left as they were and the module's mode restored, so it can run at any time
        (image grids during training, figures, the localisation score). ``dL/dA`` is fp32 and detached.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.enable_grad(), bn_stats_kept(self):
                x2 = torch.flip(x, dims=[3])
                a1, z1 = self.encode(x)
                z2 = self.encode(x2)[1] if self.uses_online_z2() else None
                loss = self.fp32(self.ssl_forward, x, x2, z1, z2).loss
                (g,) = torch.autograd.grad(loss.float(), [a1], allow_unused=True)
        finally:
            self.train(was_training)
        g = torch.zeros_like(a1) if g is None else g.float()
        return a1.detach(), g.detach()

    # ------------------------------------------------------------------ helpers
    def fp32(self, fn, *args):
        """Run heads and losses in fp32 even inside an autocast region.

        The surrounding autocast state is remembered so that encoders called from
        inside (MoCo's key encoder) can re-enter it with :meth:`backbone_autocast`.
        """
        dev = self.device.type
        self._amp_state = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        with torch.autocast(device_type=dev, enabled=False):
            return fn(*[a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args])

    def backbone_autocast(self):
        """The autocast context the backbone ran under (mixed precision, if any)."""
        enabled, dtype = getattr(self, "_amp_state", (False, torch.float32))
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=enabled)

    def gradcam_grads(self, loss: Tensor, A: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """``dL/dA`` for each map, fp32 and detached (graph kept for the backward)."""
        grads = torch.autograd.grad(loss.float(), list(A), retain_graph=True, allow_unused=True)
        return tuple(torch.zeros_like(a) if g is None else g.float().detach() for a, g in zip(A, grads))

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        (x1, x2), _ = batch
        a1, z1 = self.encode(x1)
        a2, z2 = self.encode(x2) if self.encodes_view2() else (None, None)
        out = self.fp32(self.ssl_forward, x1, x2, z1, z2)
        loss_c = out.loss
        grad_a = None
        cam_regs = [r for r in self.regularizers if r.needs_gradcam]
        if cam_regs:
            views = sorted({v for r in cam_regs for v in r.gradcam_views} & set(self.gradient_views()))
            maps = (a1, a2)
            got = dict(zip(views, self.gradcam_grads(loss_c, [maps[v] for v in views]))) if views else {}
            grad_a = tuple(got[v] if v in got else None if maps[v] is None else torch.zeros_like(maps[v])
                           for v in (0, 1))
        state = StepState((x1, x2), (a1, a2), (z1, z2), loss_c, grad_a, self.current_epoch, self.train_steps,
                          epoch_fraction(self._trainer, batch_idx))
        total = loss_c
        logs = {"train/L_C": loss_c.detach()}
        for reg in self.regularizers:
            for name, (weight, value) in reg.loss_terms(self, state).items():
                logs[f"train/{name}"] = value.detach()
                if weight != 0.0:
                    total = total + weight * value
        logs["train/loss"] = total.detach()
        logs.update({f"train/{k}": v.detach() for k, v in out.logs.items()})
        self.check_finite(total, logs)

        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        clip = self.cfg.trainer.gradient_clip_val
        for opt in opts:
            if clip:
                self.clip_gradients(opt, gradient_clip_val=clip)
            opt.step()
        scheds = self.lr_schedulers()
        for s in scheds if isinstance(scheds, list) else [scheds]:
            if s is not None:
                s.step()
        self.update_momentum()
        self.on_real_step(out)

        for opt in opts:
            for g in opt.optimizer.param_groups if hasattr(opt, "optimizer") else opt.param_groups:
                logs[f"lr/{g['name']}"] = torch.tensor(g["lr"])
        # sync_dist: under DDP the logged losses are global-batch means, as with one process
        self.log_dict(logs, on_step=True, on_epoch=False, prog_bar=False, sync_dist=True)
        self.log("loss", total.detach(), prog_bar=True, logger=False)
        return total.detach()

    def check_finite(self, total: Tensor, logs: Dict[str, Tensor]) -> None:
        if torch.isfinite(total):
            return
        bad = [k for k, v in logs.items() if not torch.isfinite(v).all()]
        raise FgsslError(
            f"non-finite loss at step {self.train_steps} (epoch {self.current_epoch}): "
            f"terms {bad or ['train/loss']}; lower method.lr or check the data"
        )

    @torch.no_grad()
    def update_momentum(self) -> None:
        m = self.ema_momentum()
        for online, target in self.momentum_pairs():
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(m).add_(po.detach(), alpha=1.0 - m)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)

    # ------------------------------------------------------------------ optim / validation
    def scaled_lr(self) -> float:
        world = self.trainer.world_size if self._trainer is not None else 1
        return self.cfg.method.lr * self.cfg.data.batch_size * world / 256.0

    def configure_optimizers(self):
        return optim.configure(self, self.scaled_lr())

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """The evaluation feature and label of a batch, collected by the kNN monitor (``callbacks/knn.py``)."""
        x, y = batch
        return self.embed(x, self.cfg.eval.feature), y


def trainable(modules: Iterable[nn.Module]) -> List[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]

"""LCR: learning the common rationale (Shu, van den Hengel, Liu, CVPR 2023).

A regularizer that attaches to any method through the method contract
(``fgssl.methods.base.Regularizer``). Per training step, for each fitted view:

1. Grad-CAM target (paper Sec. 3.2; code ``moco/builder.py``)::

       gc = ReLU( sum_c A_c * dL_C/dA_c )                     (N, h, w)

   ``dL_C/dA`` is computed once by the base step (fp32, no graph). With a GAP
   head it is spatially constant, so ``gc`` is the standard Grad-CAM
   ``ReLU(sum_c alpha_c A_c)``, ``alpha_c = mean_hw dL_C/dA_c``
   (``fgssl.nets.gradcam``).
2. Branch (``fgssl.nets.rationale_branch``): ``M = max_k ReLU(BN(W_k * A))``.
3. Attention ``att`` = min-max of ``M`` -- batch-global (faithful) or per image
   (clean) -- and the fit ``L_fit = KL(p_gc || p_att)``
   (``fgssl.losses.rationale_fit``, which documents both modes).
4. Total loss contribution ``rationale.weight * L_fit`` (code: ``nu = 0.01``).

At evaluation (``embed``; paper Sec. 3.3, code ``MoCo.inference``)::

    f = GAP(A * att) = (1/hw) sum_{ij} A_{:,ij} att_ij       then L2-normalised by the base

used by retrieval, the linear probe and the kNN monitor; ``eval.feature=gap``
turns it off (ablation).

Which views are fitted (``rationale.views``): only a view whose map has a path
to ``L_C`` has a Grad-CAM (``SSLMethod.gradient_views``); the other one's is zero
and its target would be flat. ``auto`` fits view 1 only in faithful mode (the
code's single query, ``im_q``) and, in clean mode, every view that carries
gradient (the mean of the fits): view 1 for one-directional MoCo v2 (the
default), both for SimSiam and ``method.symmetric=true``. ``first`` forces view
1; ``both`` is refused when view 2 carries no gradient.

Faithful mode versus the LCR code (MoCo v2 path). Identical: the Grad-CAM target
keeps its graph through ``A`` (``dL/dA`` has none in the code either),
batch-global min-max with ``1e-7``, row-wise softmaxes,
``kl_div(log p_att, p_gc, 'sum')``, ``GAP(A * att)`` at test (docs/method.md,
LCR). It needs the code's settings: ``method=mocov2`` with its one-directional
loss (anything else is refused with one ``fgssl error:`` line), and the queue
size K = 65,536 unless ``method.queue_size`` is given. Differences, all outside
those equations:

* BatchNorm statistics of the branch: the code runs ``conv16/bn16`` three
  times per step (query map, key-encoder map under ``no_grad``, query map
  again), so its running mean/var mixes query and key batches; we run it once
  per fitted view on the online map.
* The code also builds an attention-pooled MoCo head (``qmax/kmax``,
  ``queue_max``, ``logits_max``) that never enters its training loss; it is
  left out.
* ``log_softmax(att)`` replaces ``softmax(att).log()`` (same value).
* At test time the batch-global min-max spans one evaluation batch
  (``data.eval_batch_size``), as in the code, whose batch is its own.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor

from fgssl.errors import ConfigError
from fgssl.losses.rationale_fit import mean_entropy, normalise_attention, rationale_fit
from fgssl.methods.base import Regularizer, StepState
from fgssl.nets.gradcam import gradcam_map
from fgssl.nets.rationale_branch import RationaleBranch


def attention_pool(A: Tensor, att: Tensor) -> Tensor:
    """``GAP(A * att)``: (N, C, h, w) x (N, h, w) -> (N, C). ``att = 1`` gives plain GAP."""
    return (A * att.unsqueeze(1)).mean(dim=(2, 3))


def rationale_target(A: Tensor, grad_A: Tensor, mode: str) -> Tensor:
    """The Grad-CAM map the branch is fitted to (N, h, w).

    faithful: built from the non-detached ``A`` (gradients of ``L_fit`` reach the
    encoder through the target too, as in the code); clean: from ``A.detach()``
    (the per-image normalisation happens in the loss).
    """
    return gradcam_map(A if mode == "faithful" else A.detach(), grad_A.detach())


class RationaleRegularizer(Regularizer):
    """LCR's branch, its fit to the SSL loss's Grad-CAM, and the attention-pooled feature."""

    needs_gradcam = True

    def __init__(self, cfg, method):
        super().__init__()
        mode = str(cfg.mode)
        views = str(cfg.views)
        grad_views = tuple(method.gradient_views()) if hasattr(method, "gradient_views") else (0, 1)
        mcfg = getattr(getattr(method, "cfg", None), "method", None)
        if mode == "faithful" and mcfg is not None:
            # the LCR code: MoCo v2, one-directional InfoNCE, only the query's map fitted
            if mcfg.name != "mocov2":
                raise ConfigError(f"rationale.mode=faithful reproduces the LCR MoCo v2 code and needs "
                                 f"method=mocov2 (got method={mcfg.name}); use rationale.mode=clean")
            if mcfg.get("symmetric", False):
                raise ConfigError("rationale.mode=faithful reproduces the LCR code's one-directional MoCo v2 loss; "
                                 "drop method.symmetric=true (or use rationale.mode=clean)")
        if views == "both" and len(grad_views) < 2:
            raise ConfigError("rationale.views=both: the second view's map has no path to L_C with this method "
                             "(one-directional MoCo v2), so its Grad-CAM is zero and its target flat; use "
                             "rationale.views=auto or first, or method.symmetric=true")
        self.mode = mode
        if views == "auto":  # faithful: the code's single query view; clean: every view that carries gradient
            self.views = 1 if mode == "faithful" else len(grad_views)
        else:
            self.views = 1 if views == "first" else 2
        self.weight = float(cfg.weight)
        self.temperature = float(cfg.temperature)
        self.log_every = int(cfg.get("log_images_every_n_epochs", 0) or 0)
        self.log_num = int(cfg.get("log_images_n", 8) or 8)
        self.branch = RationaleBranch(int(method.feat_dim), int(cfg.projections))
        if self.weight == 0.0:
            # L_fit is the branch's only gradient, so with weight 0 it would never move; freezing it
            # is equivalent and keeps DDP from waiting for gradients that never come.
            self.branch.requires_grad_(False)

    # ------------------------------------------------------------------ pieces
    def attention(self, A: Tensor) -> Tensor:
        """Branch map of ``A`` normalised to [0, 1] (fp32, even under autocast)."""
        with torch.autocast(device_type=A.device.type, enabled=False):
            return normalise_attention(self.branch(A.float()), self.mode)

    @property
    def gradcam_views(self):  # type: ignore[override]
        """The fitted views (the base computes ``dL_C/dA`` for these only)."""
        return tuple(range(self.views))

    def fit(self, A: Tensor, grad_A: Tensor):
        """(FitOutput, att, target) for one view."""
        target = rationale_target(A, grad_A, self.mode)
        att = self.attention(A)
        with torch.autocast(device_type=A.device.type, enabled=False):
            return rationale_fit(att, target.float(), self.mode, self.temperature), att, target

    # ------------------------------------------------------------------ contract
    def loss_terms(self, method, state: StepState) -> Dict[str, Tuple[float, Tensor]]:
        if state.grad_A is None:
            raise RuntimeError("LCR needs dL_C/dA: the base step must compute it (needs_gradcam=True)")
        outs = [self.fit(state.A[i], state.grad_A[i])[0] for i in range(self.views)]
        loss = sum(o.loss for o in outs) / len(outs)
        if getattr(method, "_trainer", None) is not None:
            h_t = sum(mean_entropy(o.target) for o in outs) / len(outs)
            h_p = sum(mean_entropy(o.log_pred.exp(), o.log_pred) for o in outs) / len(outs)
            method.log_dict({"train/lcr_target_entropy": h_t, "train/lcr_pred_entropy": h_p},
                            on_step=True, on_epoch=False, prog_bar=False, sync_dist=False)
        return {"L_fit": (self.weight, loss)}

    def param_groups(self, method) -> List[dict]:
        # Same SGD, lr schedule and weight decay as the encoder, as in the code.
        return [{"name": "lcr_branch", "params": [p for p in self.branch.parameters() if p.requires_grad]}]

    def embed(self, method, A: Tensor, z: Tensor) -> Optional[Tensor]:
        return attention_pool(A, self.attention(A))

    def callbacks(self) -> List[pl.Callback]:
        if self.log_every <= 0:
            return []
        from fgssl.regularizers.lcr.callback import RationaleMapsCallback

        return [RationaleMapsCallback(self, self.log_every, self.log_num)]

    @classmethod
    def resolve_config(cls, cfg, own) -> None:
        """Faithful mode reproduces the LCR code, whose MoCo v2 queue is K = 65,536 (docs/method.md)."""
        if own.mode == "faithful" and cfg.method.name == "mocov2" and not cfg.method.get("queue_size"):
            cfg.method.queue_size = 65536

    def extra_repr(self) -> str:
        return f"mode={self.mode}, views={self.views}, weight={self.weight}, temperature={self.temperature}"

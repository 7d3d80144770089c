"""SYN: learning from synthesized pairs of perturbed latent vectors.

Z. Wang, L. Liu, S. R. Figueroa Weston, S. Tian, P. Li, "On Learning Discriminative
Features from Synthesized Data for Self-Supervised Fine-Grained Visual Recognition",
ECCV 2024 (arXiv 2407.14676). No code was released; everything the paper leaves
open follows ``docs/method.md`` (SYN), and each such choice is a config switch
(``regularizers/syn/syn.yaml``, :class:`fgssl.regularizers.syn.SynthesisConfig`).

Every SYN equation lives in this file (the decoder architecture is in
``fgssl/nets/decoder.py``, ``L_R`` in ``fgssl/losses/reconstruction.py``, the ν
schedule reads the training progress of each step, ``StepState.epoch + epoch_frac``).

Total loss (paper, Sec. 3 / Fig. 1a)::

    L = L_C + alpha * L_R + nu * L_Cp

* ``L_C``   the base method's SSL loss on the two augmented views (computed by the base);
* ``L_R``   ``MSE(g(z), x_down)`` for the decoder ``g`` (reconstruction.py);
* ``L_Cp``  the base method's own SSL loss (``method.ssl_loss``) on the synthesized pair.

One training step, given ``z1, z2`` of the two views (``StepState``):

1. **Dimension statistics** (paper, method section and Fig. 2: a low-variance
   dimension does not separate the data). Per dimension ``j``, over the views the step encodes online (both; view 1 only
   for one-directional MoCo v2, whose step does not encode view 2 online) and every DDP rank::

       mu_b_j  = mean_i z_ij             s2_b_j = mean_i z_ij^2 - mu_b_j^2
       mu_j   <- m mu_j + (1 - m) mu_b_j  s2_j  <- m s2_j + (1 - m) s2_b_j    (m = 0.99)

   (``s2`` is thus the EMA of the within-batch variance.) The sums are all-reduced
   with ``torch.distributed`` when it is initialised, so every rank holds the same
   statistics, equal to the single-process statistics of the global batch. The
   first update of an uninitialised module copies the batch moments (no bias
   towards the initial values); the callback normally warm-starts them with the
   exact moments of one pass over the training set. They are buffers, hence in
   every checkpoint.
2. **Grad-CAM criterion** (paper, method section: "Grad-CAM induced from the SSL loss").
   With a GAP head channel ``j`` of ``A`` is dimension ``j`` of ``z`` and the
   Grad-CAM weight is ``(1/hw) dL_C/dz_j``; the per-sample importance is::

       s_ij = |dL_C/dz_ij| * z_ij          (variants: grad_only |dL_C/dz_ij|, signed dL_C/dz_ij * z_ij)

   ``dL_C/dz = sum_hw dL_C/dA`` comes from the gradient the base computes once per
   step (``nets/gradcam.py``), detached and in fp32.
3. **Selection** of ``k = round(rho * C)`` dimensions per sample (low = non-discriminative).
   With ``r^var_j`` the rank of ``s2_j`` among the C dimensions and ``r^cam_ij`` the
   rank of ``s_ij`` within sample ``i`` (0 = lowest)::

       variance      : bottom-k of r^var_j                        (same set for every sample)
       gradcam       : bottom-k of r^cam_ij
       both (default): bottom-k of (r^var_j + r^cam_ij) / 2
       top           : top-k of (r^var_j + r^cam_ij) / 2          (= complement of bottom-(C-k))
       random        : k dimensions drawn uniformly per sample     (control)
       union         : bottom-k(var) OR  bottom-k(cam)  -> fraction in [rho, min(1, 2 rho)]
       intersection  : bottom-k(var) AND bottom-k(cam)  -> fraction in [max(0, 2 rho - 1), rho]

   Ties are broken by dimension index (stable sort), so ``top`` is exactly the
   complement of the bottom ``C - k``. The rank-based criteria select exactly ``k``
   dimensions; union/intersection select what the two sets give, and the
   fraction actually selected is logged (``train/syn_selected_frac``).
4. **Perturbation** of the selected dimensions (``M_ij = 1``), ``z~ = M * p(z) + (1 - M) * z``::

       shuffle (default): p(z)_ij = z_pi(i),j, pi a random permutation of the batch
                          without fixed points (one random cycle), same pi for every j
       gauss            : p(z)_ij = max(0, z_ij + beta * sigma_bar * eps_ij),  eps ~ N(0, 1),
                          sigma_bar = mean_j sqrt(s2_j) (one scale for all dimensions)
       gauss_dim        : the same with sigma_j = sqrt(s2_j) per dimension. Caveat: the
                          selected dimensions are the low-variance ones, so sigma_j is
                          smallest exactly there and the perturbation nearly vanishes
       zero             : p(z)_ij = 0
       mean             : p(z)_ij = mu_j

5. **Pair and L_Cp** (paper Fig. 1a and Fig. 4): ``x^ = g(sg z)``, ``x^' = g(sg z~)``
   for the first ``m = round(pair_fraction * N)`` samples of the first view
   (default 1.0: the whole batch; a smaller fraction is a speed knob only); with
   ``pair=real`` the pair is ``(x, x^')``. Both images are resized to the input size
   (``pair_size=input``, default; ``decoder`` keeps the decoder size, 4x cheaper to
   encode), flipped horizontally at random (p = 0.5, independently; no other
   augmentation), and::

       L_Cp = method.ssl_loss(x^, x^')

   The decoder receives no gradient from ``L_Cp``: ``g(sg z)`` is the detached
   output of the ``L_R`` pass (the same values: with GroupNorm the decoder treats
   each vector on its own), and ``g(sg z~)`` is decoded under ``no_grad``. ``L_Cp`` trains the
   encoder (and the method's heads) only. For MoCo ``ssl_loss`` uses the queue as
   negatives and never enqueues. ``ssl_loss`` leaves every BatchNorm running statistic
   as the real views left it (``fgssl.nets.bn_state``), while its forward uses the
   pair's own batch statistics. ``train/syn_shift`` (:func:`latent_shift`) logs how far
   ``z~`` moves from ``z`` over the selected dimensions.
6. **Schedule**: ``nu(t) = 0`` for ``t < warmup_epochs``, then a linear ramp to ``nu``
   over ``ramp_epochs``, per step from the step's training progress (:func:`nu_schedule`).
   While ``nu(t) = 0`` no pair is built at all (the step then costs the base step
   plus one decoder pass).

Cost per step. The base does 2 online encoder passes (forward + backward) for SimSiam and
symmetric MoCo v2, 1 for one-directional MoCo v2, plus 1 key pass for MoCo v2 (2 symmetric). SYN adds one decoder
forward+backward over the ``L_R`` views (``recon_views=first``: N vectors), one decoder
forward without grad for the ``m`` vectors ``z~`` and ``ssl_loss`` on the pair -- the
method's full objective again, at ``pair_size``, on ``m`` images, i.e. about
``pair_fraction`` base steps (less for one-directional MoCo v2, whose pair skips the
online pass of the second image: its loss never reads it). The pair is one more SSL
sample, so 2x the base step is the floor at ``pair_fraction=1``; the measured ratios
are in ``docs/results.md`` (``python -m fgssl.bench``). During the warm-up (nu = 0) a
step costs about 1.1x.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fgssl.losses.reconstruction import reconstruction_loss, resize_to
from fgssl.methods.base import Regularizer, StepState
from fgssl.nets.bn_state import bn_stats_kept
from fgssl.nets.decoder import Decoder
from fgssl.nets.gradcam import channel_importance
from fgssl.regularizers.syn.maths import (
    CAM_CRITERIA,
    CRITERIA,
    PERTURBATIONS,
    DimensionStats,
    bottom_k_mask,
    derangement,
    latent_shift,
    nu_schedule,
    num_selected,
    perturb,
    random_hflip,
    ranks,
    select_dims,
    spearman_rows,
)


# ----------------------------------------------------------------------------- regularizer
class SynthesisRegularizer(Regularizer):
    """SYN as a method-agnostic regularizer: decoder, statistics, selection, ``L_R``, ``L_Cp``.

    ``loss_terms`` returns ``{"L_R": (alpha, L_R)}`` plus ``{"L_Cp": (nu(t), L_Cp)}``
    whenever ``nu(t) > 0``; the base adds and logs them. It also logs (through
    ``method.log`` when a trainer is attached; always kept in ``last_logs``):
    ``train/syn_nu``, ``train/syn_selected_frac`` (mean fraction of dimensions
    perturbed), ``train/syn_shift`` (:func:`latent_shift`, how far ``z~`` moves from ``z``
    over the selected dimensions), ``train/syn_rank_corr`` (mean per-sample Spearman correlation between
    the variance and the Grad-CAM criteria) and ``train/syn_overlap`` (the fraction of
    the bottom-k variance set also in the bottom-k Grad-CAM set). The last two need
    the Grad-CAM gradient, i.e. a criterion from :data:`CAM_CRITERIA`.
    """

    def __init__(self, cfg, method):
        super().__init__()
        self.cfg = cfg
        num_selected(cfg.ratio, method.feat_dim)
        self.input_size = int(method.cfg.data.image_size)
        self.decoder_size = int(cfg.decoder_size or max(4, self.input_size // 2))
        self.decoder = Decoder(method.feat_dim, self.decoder_size, width=cfg.decoder_width,
                               min_width=cfg.decoder_min_width, norm=cfg.decoder_norm,
                               upsample=cfg.decoder_upsample)
        if float(cfg.alpha) == 0.0:
            # Only L_R trains the decoder: with alpha = 0 it is a fixed random network. Freezing it says so,
            # and keeps DDP (find_unused_parameters=False) from waiting for gradients that never come.
            self.decoder.requires_grad_(False)
        self.stats = DimensionStats(method.feat_dim, cfg.stats_momentum)
        self.last_logs: Dict[str, Tensor] = {}
        self._warned_cam = False

    # -------------------------------------------------------------- contract
    def current_nu(self, epoch: int, epoch_frac: float = 1.0) -> float:
        """nu at training progress ``epoch + epoch_frac`` (:func:`nu_schedule`; the step's ``StepState``)."""
        c = self.cfg
        return nu_schedule(c.nu, c.warmup_epochs, c.ramp_epochs, epoch, epoch_frac)

    #: The selection reads the Grad-CAM of the first view only (the pairs come from it).
    gradcam_views = (0,)

    @property
    def needs_view2(self) -> bool:  # type: ignore[override]
        """``recon_views=both`` reconstructs view 2 from its online ``z`` (so it must be encoded)."""
        return self.cfg.recon_views == "both"

    @property
    def needs_gradcam(self) -> bool:  # type: ignore[override]
        """The base computes dL_C/dA when the criterion reads Grad-CAM (``CAM_CRITERIA``)."""
        return self.cfg.criterion in CAM_CRITERIA

    def param_groups(self, method) -> List[dict]:
        """The decoder in its own Adam group (lr ``decoder_lr``, no weight decay)."""
        return [{"name": "decoder", "params": [p for p in self.decoder.parameters() if p.requires_grad],
                 "optimizer": "adam", "lr": float(self.cfg.decoder_lr), "weight_decay": 0.0,
                 "fixed_lr": bool(self.cfg.decoder_fixed_lr)}]

    def callbacks(self):
        from fgssl.regularizers.syn.callback import SynthesisCallback

        return [SynthesisCallback(self)]

    # -------------------------------------------------------------- pieces
    def selection(self, z: Tensor, grad_a: Optional[Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Mask (N, C) of the dimensions of ``z`` to perturb, and the selection diagnostics."""
        c = self.cfg
        cam = channel_importance(z.detach().float(), grad_a, c.gradcam_variant) if grad_a is not None else None
        crit = c.criterion
        if cam is None and crit in CAM_CRITERIA:
            if not self._warned_cam:
                warnings.warn("SYN: no Grad-CAM gradient on this step; the variance criterion is used instead",
                              stacklevel=2)
                self._warned_cam = True
            crit = "variance"
        mask = select_dims(crit, c.ratio, self.stats.var, cam, z.shape[0])
        logs = {"syn_selected_frac": mask.float().mean()}
        if cam is not None:
            var_row = self.stats.var.float().unsqueeze(0).expand_as(cam)
            logs["syn_rank_corr"] = spearman_rows(var_row, cam)
            k = num_selected(c.ratio, z.shape[1])
            if k > 0:
                both = bottom_k_mask(ranks(var_row, 1), k) & bottom_k_mask(ranks(cam.float(), 1), k)
                logs["syn_overlap"] = both.float().sum(1).mean() / k
        return mask, logs

    def perturbed(self, z: Tensor, mask: Tensor) -> Tensor:
        return perturb(z, mask, self.cfg.perturbation, self.stats.mean, self.stats.var, self.cfg.gauss_beta)

    def _to_pair_size(self, x: Tensor) -> Tensor:
        size = self.input_size if self.cfg.pair_size == "input" else self.decoder_size
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)

    # -------------------------------------------------------------- step
    def loss_terms(self, method, state: StepState) -> Dict[str, Tuple[float, Tensor]]:
        c = self.cfg
        x1, x2 = state.x
        z1, z2 = state.z
        n = z1.shape[0]
        self.stats.update(z1 if z2 is None else torch.cat([z1, z2]))  # the views encoded online this step

        # L_R: one decoder pass over the reconstructed views.
        if c.recon_views == "both":
            z_rec, x_rec = torch.cat([z1, z2]), torch.cat([x1, x2])
        else:
            z_rec, x_rec = z1, x1
        if not c.recon_trains_encoder:
            z_rec = z_rec.detach()
        x_small = resize_to(x_rec, self.decoder_size)
        with torch.set_grad_enabled(torch.is_grad_enabled() and float(c.alpha) != 0.0):
            rec = self.decoder(z_rec)
            loss_r = reconstruction_loss(rec, x_small)
        terms: Dict[str, Tuple[float, Tensor]] = {"L_R": (float(c.alpha), loss_r)}

        # Selection diagnostics every step (cheap); the pair only while nu > 0.
        grad_a = state.grad_A[0] if state.grad_A is not None else None
        mask, logs = self.selection(z1, grad_a)
        nu = self.current_nu(state.epoch, state.epoch_frac)
        logs["syn_nu"] = torch.tensor(nu, device=z1.device)
        m = min(n, max(2, int(round(c.pair_fraction * n))))
        z_tilde = self.perturbed(z1, mask)[:m]  # shuffle draws from the whole batch
        logs["syn_shift"] = latent_shift(z1[:m], z_tilde, mask[:m])
        if nu > 0:
            # (the guard matters for decoder_norm=batch; the pair's encoder passes are guarded in ssl_loss)
            with torch.no_grad(), bn_stats_kept(self.decoder):
                x_hat2 = self.decoder(z_tilde)  # g(sg z~)
            if c.pair == "synthetic":
                first = rec[:m].detach()  # g(sg z1): the L_R output, the decoder being per-sample
            else:
                first = x1[:m] if c.pair_size == "input" else x_small[:m]
            a = random_hflip(self._to_pair_size(first).to(x1.dtype), c.pair_hflip)
            b = random_hflip(self._to_pair_size(x_hat2).to(x1.dtype), c.pair_hflip)
            terms["L_Cp"] = (nu, method.ssl_loss(a, b))

        self.last_logs = {k: v.detach() for k, v in logs.items()}
        if getattr(method, "_trainer", None) is not None:
            method.log_dict({f"train/{k}": v for k, v in self.last_logs.items()}, on_step=True, on_epoch=False)
        return terms

    # -------------------------------------------------------------- figures
    def synthesize(self, method, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(g(z), g(z~))`` at the decoder size for images ``x``, with the model in eval mode.

        Used by the image-grid callback and ``figures.py`` (Fig. 4 of the paper). The
        Grad-CAM criterion reads the method's loss on the pair ``(x, hflip(x))``; no
        parameter, BatchNorm statistic, queue or running statistic is changed. The
        shuffle perturbation permutes within ``x``.
        """
        grad_a = None
        if self.needs_gradcam:
            a1, grad_a = method.pair_gradcam(x)
        was_training = method.training
        method.eval()
        try:
            with torch.no_grad(), bn_stats_kept(method):
                z1 = (a1.mean(dim=(2, 3)) if grad_a is not None else method.encode(x)[1]).detach().float()
                mask, _ = self.selection(z1, grad_a)
                rec = self.decoder(z1).float()
                pert = self.decoder(self.perturbed(z1, mask)).float()
        finally:
            method.train(was_training)
        return rec, pert


__all__ = [
    "SynthesisRegularizer", "DimensionStats", "nu_schedule", "select_dims", "perturb", "ranks",
    "bottom_k_mask", "spearman_rows", "derangement", "random_hflip", "num_selected", "latent_shift", "CRITERIA",
    "CAM_CRITERIA", "PERTURBATIONS",
]

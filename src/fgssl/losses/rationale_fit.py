"""LCR's fit of the rationale branch to the Grad-CAM of the SSL loss.

Shu, van den Hengel, Liu, "Learning Common Rationale to Improve Self-Supervised
Representation for Fine-Grained Visual Recognition Problems", CVPR 2023
(arXiv 2303.01669), Sec. 3.2, and the public code GANPerf/LCR
(``moco/builder.py``: ``max_mask``; ``main_moco.py``: ``loss_cam``;
``main.py`` + ``models/byol.py``: the BYOL path). See docs/method.md, LCR.

Notation: ``M`` (N, h, w) is the raw branch map, ``att`` its normalisation to
[0, 1], ``gc`` (N, h, w) the Grad-CAM map ``ReLU(sum_c A * dL_C/dA)``.

Two modes (``rationale.mode``):

``faithful`` -- the MoCo v2 code (docs/method.md, LCR), to the letter:

* ``att = (M - min M) / (max(M - min M) + 1e-7)``, min and max over the *whole
  batch* (:func:`minmax_batch`);
* ``L_fit = KL(softmax(gc) || softmax(att))`` with both softmaxes along the
  last axis only (one distribution per row of the map: N*h distributions over w
  positions), summed over every element (``reduction='sum'``). The code calls
  ``F.kl_div(att.softmax(-1).log(), gc.softmax(-1), reduction='sum')``, i.e.
  input = log of the *predicted* distribution, target = the *Grad-CAM*
  distribution: ``sum p_gc * (log p_gc - log p_att)``. We keep that argument
  order and use ``log_softmax(att)``, which equals ``softmax(att).log()`` up
  to float rounding (att lies in [0, 1], so nothing underflows there);
* the target is *not* detached and not normalised: ``gc`` keeps its graph to
  ``A`` (``dL_C/dA`` itself carries none, as in the code, which calls
  ``autograd.grad`` without ``create_graph``).

``clean`` -- our default (docs/method.md, LCR modes), after the BYOL path of the code:

* ``att`` is min-max normalised *per image* (:func:`minmax_per_image`); an
  image whose map is constant gets ``att = 1`` (plain GAP at test time);
* the target is detached and divided by its per-image maximum, so its scale no
  longer depends on the (tiny) magnitude of ``dL_C/dA``;
* both maps are flattened over all h*w positions and divided by a temperature
  ``t`` (0.4 in the BYOL path) before the softmax;
* ``L_fit = KL(softmax(gc~/t) || softmax(att/t))`` averaged over the images
  (``reduction='batchmean'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fgssl.errors import ConfigError

#: The code's stabiliser in ``att = img / (1e-7 + max img)``.
EPS = 1e-7
#: A per-image range below this counts as a constant map (clean mode).
FLAT_RANGE = 1e-6
MODES = ("faithful", "clean")


def minmax_batch(M: Tensor, eps: float = EPS) -> Tensor:
    """Faithful: shift by the batch minimum, divide by the batch maximum of the shifted map."""
    m = M - M.min()
    return m / (m.max() + eps)


def minmax_per_image(M: Tensor, eps: float = EPS) -> Tensor:
    """Clean: per-image min-max to [0, 1]; a constant map becomes all ones."""
    flat = M.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    rng = flat.max(dim=1, keepdim=True).values - lo
    att = (flat - lo) / (rng + eps)
    att = torch.where(rng > FLAT_RANGE, att, torch.ones_like(att))
    return att.view_as(M)


def normalise_attention(M: Tensor, mode: str) -> Tensor:
    """Raw branch map (N, h, w) -> attention in [0, 1] as the mode prescribes."""
    if mode == "faithful":
        return minmax_batch(M)
    if mode == "clean":
        return minmax_per_image(M)
    raise ConfigError(f"rationale.mode={mode!r} must be one of {MODES}")


@dataclass
class FitOutput:
    """The fit loss and the two distributions it compares (rows = distributions)."""

    loss: Tensor
    #: Target (Grad-CAM) distribution, (rows, positions).
    target: Tensor
    #: Log of the predicted (branch) distribution, (rows, positions).
    log_pred: Tensor


def fit_faithful(att: Tensor, gradcam: Tensor) -> FitOutput:
    """The MoCo v2 code's ``loss_cam``: row-wise softmaxes, ``reduction='sum'``, target with graph."""
    w = att.shape[-1]
    log_q = F.log_softmax(att, dim=-1)
    p = F.softmax(gradcam, dim=-1)
    loss = F.kl_div(log_q, p, reduction="sum")
    return FitOutput(loss, p.reshape(-1, w), log_q.reshape(-1, w))


def fit_clean(att: Tensor, gradcam: Tensor, temperature: float = 0.4) -> FitOutput:
    """Whole-map softmaxes at temperature ``t``, detached max-normalised target, ``batchmean``."""
    if temperature <= 0:
        raise ConfigError(f"rationale.temperature={temperature} must be > 0")
    target = gradcam.detach().flatten(1)
    target = target / (target.max(dim=1, keepdim=True).values + EPS)
    log_q = F.log_softmax(att.flatten(1) / temperature, dim=1)
    p = F.softmax(target / temperature, dim=1)
    loss = F.kl_div(log_q, p, reduction="batchmean")
    return FitOutput(loss, p, log_q)


def rationale_fit(att: Tensor, gradcam: Tensor, mode: str, temperature: float = 0.4) -> FitOutput:
    """``L_fit`` between the attention ``att`` and the Grad-CAM ``gradcam`` (both (N, h, w))."""
    if att.shape != gradcam.shape:
        raise ValueError(f"attention {tuple(att.shape)} and Grad-CAM {tuple(gradcam.shape)} differ in shape")
    if mode == "faithful":
        return fit_faithful(att, gradcam)
    if mode == "clean":
        return fit_clean(att, gradcam, temperature)
    raise ConfigError(f"rationale.mode={mode!r} must be one of {MODES}")


@torch.no_grad()
def mean_entropy(p: Tensor, log_p: Tensor | None = None) -> Tensor:
    """Mean Shannon entropy (nats) of the rows of ``p``; uniform over n positions gives log n."""
    if log_p is None:
        log_p = p.clamp_min(1e-30).log()
    return -(p * log_p).sum(dim=-1).mean()

"""Grad-CAM of the SSL loss, shared by SYN and LCR.

The base training step computes ``G = dL_C/dA`` once per step (fp32) when a
regularizer asks for it (``Regularizer.needs_gradcam``). Both papers read it:

* LCR (Shu et al. 2023, Sec. 3.2): ``gradcam = ReLU(sum_c A_c * G_c)`` per position.
  With a GAP head, ``G_c`` is spatially constant (``dL/dz_c / hw``), so this equals
  the standard Grad-CAM ``ReLU(sum_c alpha_c A_c)`` with ``alpha_c = mean_hw G_c``.
* SYN (Wang et al. 2024, Sec. 3.2): per-sample, per-dimension importance
  ``s_ij = |dL/dz_ij| * z_ij``, with ``dL/dz = sum_hw G`` (because ``z = mean_hw A``).
"""

from __future__ import annotations

from torch import Tensor

from fgssl.errors import ConfigError


def gradcam_map(A: Tensor, grad_A: Tensor) -> Tensor:
    """``ReLU(sum_c A * dL/dA)``: (N, C, h, w) x2 -> (N, h, w)."""
    return (A * grad_A).sum(dim=1).clamp_min(0)


def grad_z_from_grad_A(grad_A: Tensor) -> Tensor:
    """``dL/dz`` for ``z = mean_hw(A)``: the spatial *sum* of ``dL/dA`` (N, C)."""
    return grad_A.sum(dim=(2, 3))


def channel_importance(z: Tensor, grad_A: Tensor, variant: str = "abs") -> Tensor:
    """SYN's Grad-CAM criterion per sample and dimension (N, C); low = non-discriminative.

    ``abs`` (default): ``|dL/dz| * z``; ``grad_only``: ``|dL/dz|``; ``signed``: ``dL/dz * z``.
    """
    gz = grad_z_from_grad_A(grad_A)
    if variant == "abs":
        return gz.abs() * z
    if variant == "grad_only":
        return gz.abs()
    if variant == "signed":
        return gz * z
    raise ConfigError(f"synthesis.gradcam_variant={variant!r} must be abs, grad_only or signed")

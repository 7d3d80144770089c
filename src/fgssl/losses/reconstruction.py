"""SYN reconstruction loss: the ``L_R`` of ``L = L_C + alpha L_R + nu L_Cp`` (Wang et al., ECCV 2024, Fig. 1a).

    L_R = MSE( g(z), x_down ) = mean_{n,c,u,v} ( g(z)_{n,c,u,v} - x_down_{n,c,u,v} )^2

``g`` is the decoder (``fgssl.nets.decoder``), ``z = GAP(layer4(x))`` the pooled
feature of an augmented view ``x`` and ``x_down`` that view resized to the
decoder's output size. Both live in normalised-pixel space (ImageNet mean/std),
so no de-normalisation is needed. The loss is computed in fp32 even under mixed
precision.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_to(x: Tensor, size: int) -> Tensor:
    """Bilinear (anti-aliased when shrinking) resize of ``x`` (N, 3, H, W) to ``size x size``, fp32."""
    x = x.float()
    if x.shape[-2] == size and x.shape[-1] == size:
        return x
    shrink = size < min(x.shape[-2], x.shape[-1])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def reconstruction_loss(recon: Tensor, x: Tensor) -> Tensor:
    """``L_R = MSE(recon, x resized to recon's size)``; ``x`` may already be at that size."""
    target = resize_to(x, recon.shape[-1]).detach()
    return F.mse_loss(recon.float(), target)

"""MoCo v2 two-view augmentation and the evaluation transform (torchvision v2).

Both accept PIL images or uint8 tensors (the in-memory cache), so the same
pipeline serves disk and RAM datasets.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _blur_kernel(size: int) -> int:
    k = max(3, int(0.1 * size))
    return k if k % 2 == 1 else k + 1


def mocov2_view(size: int, min_scale: float = 0.2, jitter_strength: float = 1.0, jitter_p: float = 0.8,
                gray_p: float = 0.2, blur_p: float = 0.5) -> v2.Compose:
    """One MoCo v2 view: RRC(0.2-1), ColorJitter(.4,.4,.4,.1) p=.8, Gray p=.2, Blur p=.5, HFlip.

    ``jitter_strength`` scales the four jitter ranges (1.0 = MoCo v2's 0.4, 0.4, 0.4, 0.1); it and
    the three probabilities are the augmentation-strength knobs of ``data.*`` (defaults = MoCo v2).
    """
    s = jitter_strength
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s)], p=jitter_p),
        v2.RandomGrayscale(p=gray_p),
        v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=blur_p),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_resize(size: int) -> int:
    """The resize side of the evaluation transform: 256/224 of the crop (73 px for 64 px crops)."""
    return round(size * 256 / 224)


def eval_crop(size: int) -> v2.Compose:
    """The geometric part of :func:`eval_transform`: Resize(size * 256/224) + CenterCrop(size), uint8 out.

    The device pipeline stores this output once per image (``fgssl.data.decoded``) and applies
    :func:`eval_normalize` per batch: the same ops in the same order as :func:`eval_transform`."""
    return v2.Compose([v2.ToImage(), v2.Resize(eval_resize(size), antialias=True), v2.CenterCrop(size)])


def eval_normalize() -> v2.Compose:
    """uint8 -> float in [0, 1] -> ImageNet normalisation (the rest of :func:`eval_transform`); batched too."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(size: int) -> v2.Compose:
    """Resize(size * 256/224) + CenterCrop(size): the standard test transform."""
    return v2.Compose([eval_crop(size), eval_normalize()])


def cache_resize(side: int) -> v2.Compose:
    """The workers path's RAM cache (``data.cache``): PIL -> uint8 tensor, shorter side resized to ``side``."""
    return v2.Compose([v2.PILToTensor(), v2.Resize(side, antialias=True)])


def linear_train_transform(size: int) -> v2.Compose:
    """Augmentation of the SGD linear protocol: RandomResizedCrop + HFlip."""
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class TwoViews:
    """Apply the same random transform twice: ``x -> (t(x), t(x))``."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, x):
        return self.transform(x), self.transform(x)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of the ImageNet normalisation, clamped to [0, 1] (for image grids)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)

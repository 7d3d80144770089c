"""LCR (Shu, van den Hengel, Liu, CVPR 2023) as a plug-in: ``rationale=lcr`` attaches it to any method.

This package is the whole of LCR: its config (below, with ``lcr.yaml``), the regularizer (``regularizer.py``)
and its image-grid callback (``callback.py``); one registration line at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fgssl.config import bounded, register_regularizer

Mode = StrEnum("Mode", "clean faithful")
Views = StrEnum("Views", "auto first both")


@dataclass
class RationaleConfig:
    """LCR (docs/method.md, LCR; ``regularizers/lcr/regularizer.py``)."""

    #: ``lcr`` attaches LCR, ``none`` (the default) nothing.
    name: str = "none"
    #: Weight of the fit loss ``L_fit`` (LCR code: 0.01; 0 trains the branch's BN stats only).
    weight: float = bounded(0.01, ge=0)
    #: K, the number of 1x1 projections of the branch (LCR code: 32).
    projections: int = bounded(32, ge=1)
    #: ``clean`` (default: whole-map softmax at ``temperature``, detached max-normalised
    #: target, batchmean, per-image min-max) or ``faithful`` (the MoCo v2 code exactly).
    mode: Mode = Mode.clean
    #: Softmax temperature of clean mode (LCR BYOL path: 0.4); faithful ignores it.
    temperature: float = bounded(0.4, gt=0)
    #: Views whose maps are fitted: ``auto`` (faithful: the first, as the code's single
    #: query; clean: both), ``first`` or ``both``.
    views: Views = Views.auto
    #: Image grid of input / Grad-CAM / attention every N epochs and at the last (0 = off).
    log_images_every_n_epochs: int = bounded(5, ge=0)
    #: Number of images (fixed test images) in that grid.
    log_images_n: int = bounded(8, ge=1)


register_regularizer("rationale", "lcr", RationaleConfig, "fgssl.regularizers.lcr.regularizer:RationaleRegularizer",
                     label="LCR", yaml=Path(__file__).with_name("lcr.yaml"), order=20)

"""SYN (Wang et al., ECCV 2024) as a plug-in: ``synthesis=syn`` attaches it to any method.

This package is the whole of SYN: its config (below, with ``syn.yaml`` holding the documented option), the
regularizer and its equations (``regularizer.py``, ``maths.py``) and its callback (``callback.py``). The
registration line at the bottom is all fgssl needs to know about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Optional

from fgssl.config import bounded, register_regularizer

Criterion = StrEnum("Criterion", "variance gradcam both union intersection random top")
GradcamVariant = StrEnum("GradcamVariant", "abs grad_only signed")
Perturbation = StrEnum("Perturbation", "shuffle gauss gauss_dim zero mean")
Pair = StrEnum("Pair", "synthetic real")
PairSize = StrEnum("PairSize", "input decoder")
DecoderNorm = StrEnum("DecoderNorm", "group batch none")
Upsample = StrEnum("Upsample", "nearest bilinear")
ReconViews = StrEnum("ReconViews", "first both")


@dataclass
class SynthesisConfig:
    """SYN (Wang et al., ECCV 2024; docs/method.md, SYN). Equations: ``regularizers/syn/regularizer.py``."""

    #: ``syn`` attaches SYN, ``none`` (the default) nothing.
    name: str = "none"
    #: Weight of the reconstruction loss L_R in ``L = L_C + alpha L_R + nu L_Cp``.
    alpha: float = bounded(0.05, ge=0)
    #: Final weight of L_Cp (the SSL loss on the synthesized pair), reached after warm-up + ramp.
    nu: float = bounded(1.0, ge=0)
    #: Fraction rho of the C dimensions perturbed per sample (k = round(rho C)).
    ratio: float = bounded(0.5, ge=0, le=1)
    #: Which dimensions are non-discriminative: ``both`` (rank average of variance and Grad-CAM),
    #: ``variance``, ``gradcam``, ``union``, ``intersection``, ``random`` (control), ``top`` (sanity check).
    criterion: Criterion = Criterion.both
    #: Grad-CAM importance: ``abs`` (|dL/dz| z), ``grad_only`` (|dL/dz|), ``signed`` (dL/dz z).
    gradcam_variant: GradcamVariant = GradcamVariant.abs
    #: How selected dims change: ``shuffle`` (in-batch permutation), ``gauss`` (z + beta sigma-bar eps, sigma-bar
    #: the mean running std over dims), ``gauss_dim`` (per-dim sigma_j: nearly no change on the low-variance
    #: dims the criterion selects), ``zero``, ``mean``.
    perturbation: Perturbation = Perturbation.shuffle
    #: beta of ``gauss``/``gauss_dim``: z + beta * sigma * eps, clamped >= 0.
    gauss_beta: float = bounded(1.0, ge=0)
    #: ``synthetic``: (g(sg z), g(sg z~)); ``real``: (x, g(sg z~)).
    pair: Pair = Pair.synthetic
    #: Resolution at which the pair is encoded: ``input`` (upsampled, docs/method.md) or ``decoder`` (4x cheaper).
    pair_size: PairSize = PairSize.input
    #: Fraction of the batch (first samples of view 1) that forms synthesized pairs: 1.0 (default) = every
    #: sample, as the paper. A speed knob only: L_Cp costs about 0.7-0.8 base steps per unit of fraction
    #: on the CPU bench (measured cost and effect: docs/results.md).
    pair_fraction: float = bounded(1.0, gt=0, le=1)
    #: Probability of the random horizontal flip applied to each image of the pair (the only augmentation).
    pair_hflip: float = bounded(0.5, ge=0, le=1)
    #: Decoder output side in px; null = half the input size (112 at 224).
    decoder_size: Optional[int] = bounded(None, ge=4)
    #: Channels of the decoder's first map; halved at every 2x up-block (256 for a roomier decoder).
    decoder_width: int = bounded(128, ge=1)
    #: Lower bound of the decoder's channel count.
    decoder_min_width: int = bounded(16, ge=1)
    #: Decoder normalisation: ``group`` (per sample: g(z_i) ignores the rest of the batch), ``batch``, ``none``.
    decoder_norm: DecoderNorm = DecoderNorm.group
    #: Resize-conv upsampling mode: ``nearest`` or ``bilinear`` (never transposed convs).
    decoder_upsample: Upsample = Upsample.nearest
    #: Adam lr of the decoder (its own optimizer; author's prototype: 1e-4).
    decoder_lr: float = bounded(1e-4, gt=0)
    #: Keep the decoder lr constant (true) or follow the method's warm-up + cosine schedule.
    decoder_fixed_lr: bool = True
    #: Views reconstructed by L_R: ``first`` (the view the pairs come from; one decoder pass over N)
    #: or ``both`` (one pass over 2N, twice the decoder cost).
    recon_views: ReconViews = ReconViews.first
    #: L_R also trains the encoder (false: z is detached before the decoder).
    recon_trains_encoder: bool = True
    #: nu = 0 for this many epochs (the decoder learns first; no pair is built meanwhile).
    warmup_epochs: int = bounded(10, ge=0)
    #: Then nu ramps linearly (per step) from 0 to ``nu`` over this many epochs.
    ramp_epochs: int = bounded(5, ge=0)
    #: EMA momentum m of the per-dimension mean/variance of z (updated from step 0).
    stats_momentum: float = bounded(0.99, ge=0, lt=1)
    #: Initialise the statistics with one no-grad pass over the training views at fit start.
    warm_start: bool = True
    #: Cap on the batches of that pass (null = the whole epoch the trainer sees).
    warm_start_batches: Optional[int] = bounded(None, ge=1)
    #: Save (and log to wandb) an image grid of (x, g(z), g(z~)) every N epochs and at the last epoch (0 = off).
    log_images_every_n_epochs: int = bounded(5, ge=0)
    #: Number of samples in that grid.
    log_images_n: int = bounded(8, ge=2)


register_regularizer("synthesis", "syn", SynthesisConfig, "fgssl.regularizers.syn.regularizer:SynthesisRegularizer",
                     label="SYN", yaml=Path(__file__).with_name("syn.yaml"), order=10)

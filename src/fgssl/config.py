"""Structured configuration schema for fgssl.

Every config group under ``conf/`` is validated against one of the dataclasses
below. They are registered in Hydra's ConfigStore as ``fgssl_schema`` and the
root ``conf/config.yaml`` lists that schema first in its defaults, so the whole
tree is in *struct* mode: a misspelt key such as ``data.rot=1`` fails with an
error that names ``rot`` instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class DataConfig:
    #: ``cub53`` (embedded), ``cub``, ``cars``, ``aircraft`` or ``imagefolder``.
    name: str = "cub53"
    #: Dataset root. For ``cub53`` it defaults to the copy vendored in the repo.
    root: Optional[str] = None
    #: ``cub``/``aircraft``/``cars``: when the dataset folder under ``root`` is missing, run
    #: ``python -m fgssl.data.prepare`` first (downloads). Off by default: never download silently.
    download: bool = False
    #: Side of the square crops fed to the network (train views and eval crops).
    image_size: int = 64
    #: Per-process batch size for pre-training.
    batch_size: int = 64
    #: Batch size for feature extraction.
    eval_batch_size: int = 256
    num_workers: int = 2
    #: Input pipeline: ``device`` (decode once into a uint8 cache held on the training device, both
    #: views augmented there in batches), ``workers`` (PIL decode + per-image torchvision augmentation in
    #: loader workers, for datasets far larger than memory) or ``auto`` (device when the decoded dataset
    #: fits ``cache_budget_gb``). See docs/data_pipeline.md.
    pipeline: str = "auto"
    #: Memory budget of the device pipeline's decoded cache, in GiB (GPU memory, else pinned host memory).
    cache_budget_gb: float = 4.0
    #: Where decoded caches are stored (keyed by file list, file sizes and side); null = $FGSSL_CACHE_DIR
    #: or ~/.cache/fgssl.
    cache_dir: Optional[str] = None
    #: Workers path only: decode every image once and keep it in RAM as uint8 (shorter side resized to
    #: ``cache_size``). Fast for small sets.
    cache: bool = False
    #: Side of the decoded images (workers cache: shorter side; device cache: S x S, original H x W kept);
    #: null = 2 x image_size.
    cache_size: Optional[int] = None
    #: Minimum crop scale of RandomResizedCrop (MoCo v2: 0.2).
    crop_min_scale: float = 0.2
    #: Augmentation strength (defaults = MoCo v2): ColorJitter ranges scaled by ``jitter_strength``
    #: (1.0 = 0.4, 0.4, 0.4, 0.1) applied with ``jitter_p``; grayscale with ``gray_p``; blur with ``blur_p``.
    jitter_strength: float = 1.0
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    #: Corrupt/unreadable images: ``skip`` (warn, count, list in the run dir) or ``error``.
    on_bad_image: str = "skip"
    #: Verify every image header once at setup (catches zero-byte/corrupt files early).
    verify_images: bool = True


@dataclass
class BackboneConfig:
    #: ``resnet18`` or ``resnet50`` (torchvision).
    name: str = "resnet18"
    #: Path to a local torchvision state_dict (``.pth``); null = random init.
    weights: Optional[str] = None
    #: ``imagenet`` (7x7/2 conv + maxpool) or ``small`` (3x3/1 conv, no maxpool) for tiny images.
    stem: str = "imagenet"
    #: Zero-initialise the last BatchNorm gamma of every residual block (each block starts as the
    #: identity). null = the method's reference setting: true for SimSiam (its reference code), false
    #: for MoCo v2 (its reference code keeps torchvision's default).
    zero_init_residual: Optional[bool] = None


@dataclass
class MethodConfig:
    #: ``mocov2`` or ``simsiam``.
    name: str = "mocov2"
    #: Base learning rate at batch 256; the effective lr is ``lr * batch * world / 256``.
    lr: float = 0.06
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    warmup_epochs: float = 0.0
    #: Projector output dimension (MoCo: 256, SimSiam: 2048).
    proj_dim: int = 256
    #: Projector hidden dimension; null = the backbone's feature dimension C.
    proj_hidden: Optional[int] = None
    # --- MoCo v2 -------------------------------------------------------------
    temperature: float = 0.2
    #: EMA momentum of the key encoder.
    ema_momentum: float = 0.999
    #: Queue length K; null = min(65536, largest multiple of the global batch <= 4x train size).
    queue_size: Optional[int] = None
    #: Symmetrised InfoNCE (both views as query and key). false = one-directional, as the MoCo v2
    #: and LCR code (one online pass with backward per step instead of two).
    symmetric: bool = False
    #: Shuffle BN on one device: BatchNorm over this many interleaved groups of the batch (the MoCo
    #: papers' per-GPU BN), keys shuffled before the key encoder (nets/split_bn.py); 1 = plain BN.
    bn_splits: int = 1
    # --- SimSiam -------------------------------------------------------------
    pred_hidden: int = 512
    #: Keep the predictor at a fixed lr (SimSiam paper, Sec. 4.1).
    fixed_pred_lr: bool = True


@dataclass
class SynthesisConfig:
    """SYN (Wang et al., ECCV 2024; docs/method.md, SYN). Equations: ``fgssl/fgvr/synthesis.py``."""

    #: ``none`` or ``syn``.
    name: str = "none"
    #: Weight of the reconstruction loss L_R in ``L = L_C + alpha L_R + nu L_Cp``.
    alpha: float = 0.05
    #: Final weight of L_Cp (the SSL loss on the synthesized pair), reached after warm-up + ramp.
    nu: float = 1.0
    #: Fraction rho of the C dimensions perturbed per sample (k = round(rho C)).
    ratio: float = 0.5
    #: Which dimensions are non-discriminative: ``both`` (rank average of variance and Grad-CAM),
    #: ``variance``, ``gradcam``, ``union``, ``intersection``, ``random`` (control), ``top`` (sanity check).
    criterion: str = "both"
    #: Grad-CAM importance: ``abs`` (|dL/dz| z), ``grad_only`` (|dL/dz|), ``signed`` (dL/dz z).
    gradcam_variant: str = "abs"
    #: How selected dims change: ``shuffle`` (in-batch permutation), ``gauss`` (z + beta sigma-bar eps, sigma-bar
    #: the mean running std over dims), ``gauss_dim`` (per-dim sigma_j: nearly no change on the low-variance
    #: dims the criterion selects), ``zero``, ``mean``.
    perturbation: str = "shuffle"
    #: beta of ``gauss``/``gauss_dim``: z + beta * sigma * eps, clamped >= 0.
    gauss_beta: float = 1.0
    #: ``synthetic``: (g(sg z), g(sg z~)); ``real``: (x, g(sg z~)).
    pair: str = "synthetic"
    #: Resolution at which the pair is encoded: ``input`` (upsampled, docs/method.md) or ``decoder`` (4x cheaper).
    pair_size: str = "input"
    #: Fraction of the batch (first samples of view 1) that forms synthesized pairs: 1.0 (default) = every
    #: sample, as the paper. A speed knob only: L_Cp costs about 0.7-0.8 base steps per unit of fraction
    #: on the CPU bench (measured cost and effect: docs/results.md).
    pair_fraction: float = 1.0
    #: Probability of the random horizontal flip applied to each image of the pair (the only augmentation).
    pair_hflip: float = 0.5
    #: Decoder output side in px; null = half the input size (112 at 224).
    decoder_size: Optional[int] = None
    #: Channels of the decoder's first map; halved at every 2x up-block (256 for a roomier decoder).
    decoder_width: int = 128
    #: Lower bound of the decoder's channel count.
    decoder_min_width: int = 16
    #: Decoder normalisation: ``group`` (per sample: g(z_i) ignores the rest of the batch), ``batch``, ``none``.
    decoder_norm: str = "group"
    #: Resize-conv upsampling mode: ``nearest`` or ``bilinear`` (never transposed convs).
    decoder_upsample: str = "nearest"
    #: Adam lr of the decoder (its own optimizer; author's prototype: 1e-4).
    decoder_lr: float = 1e-4
    #: Keep the decoder lr constant (true) or follow the method's warm-up + cosine schedule.
    decoder_fixed_lr: bool = True
    #: Views reconstructed by L_R: ``first`` (the view the pairs come from; one decoder pass over N)
    #: or ``both`` (one pass over 2N, twice the decoder cost).
    recon_views: str = "first"
    #: L_R also trains the encoder (false: z is detached before the decoder).
    recon_trains_encoder: bool = True
    #: nu = 0 for this many epochs (the decoder learns first; no pair is built meanwhile).
    warmup_epochs: int = 10
    #: Then nu ramps linearly (per step) from 0 to ``nu`` over this many epochs.
    ramp_epochs: int = 5
    #: EMA momentum m of the per-dimension mean/variance of z (updated from step 0).
    stats_momentum: float = 0.99
    #: Initialise the statistics with one no-grad pass over the training views at fit start.
    warm_start: bool = True
    #: Cap on the batches of that pass (null = the whole epoch the trainer sees).
    warm_start_batches: Optional[int] = None
    #: Save (and log to wandb) an image grid of (x, g(z), g(z~)) every N epochs and at the last epoch (0 = off).
    log_images_every_n_epochs: int = 5
    #: Number of samples in that grid.
    log_images_n: int = 8


@dataclass
class RationaleConfig:
    """LCR (docs/method.md, LCR; ``fgssl/fgvr/rationale.py``)."""

    #: ``none`` or ``lcr``.
    name: str = "none"
    #: Weight of the fit loss ``L_fit`` (LCR code: 0.01; 0 trains the branch's BN stats only).
    weight: float = 0.01
    #: K, the number of 1x1 projections of the branch (LCR code: 32).
    projections: int = 32
    #: ``clean`` (default: whole-map softmax at ``temperature``, detached max-normalised
    #: target, batchmean, per-image min-max) or ``faithful`` (the MoCo v2 code exactly).
    mode: str = "clean"
    #: Softmax temperature of clean mode (LCR BYOL path: 0.4); faithful ignores it.
    temperature: float = 0.4
    #: Views whose maps are fitted: ``auto`` (faithful: the first, as the code's single
    #: query; clean: both), ``first`` or ``both``.
    views: str = "auto"
    #: Image grid of input / Grad-CAM / attention every N epochs and at the last (0 = off).
    log_images_every_n_epochs: int = 5
    #: Number of images (fixed test images) in that grid.
    log_images_num: int = 8


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    max_epochs: int = 6
    sync_batchnorm: bool = False
    #: Train on at most this many batches per epoch (a whole number >= 1, so 1 = one batch), or on
    #: this fraction of the epoch (< 1); null = the whole epoch.
    limit_train_batches: Optional[float] = None
    log_every_n_steps: int = 10
    gradient_clip_val: Optional[float] = None
    deterministic: bool = False
    enable_progress_bar: bool = True
    channels_last: bool = False
    #: ``torch.compile`` the backbones (online and momentum encoder).
    compile: bool = False
    #: Stop when the collapse indicator (SimSiam) stays below this for
    #: ``collapse_patience`` steps (0 = off).
    collapse_threshold: float = 1e-3
    collapse_patience: int = 50
    #: Also rewrite ``checkpoints/last.ckpt`` every N training steps (batches, whatever the number
    #: of optimizers), so a kill in the middle of a long epoch costs at most N steps; 0 (or less) =
    #: epoch ends only.
    ckpt_every_n_steps: int = 500
    #: Also keep ``checkpoints/epochNNN.ckpt`` every N epochs (0 = keep only ``last.ckpt``: a
    #: ResNet-18 MoCo v2 checkpoint is ~150 MB, a ResNet-50 one ~700 MB).
    keep_every_n_epochs: int = 0


@dataclass
class LoggerConfig:
    #: ``wandb``, ``csv`` or ``none``.
    name: str = "wandb"
    #: wandb mode: ``offline`` (default, no account needed), ``online`` or ``disabled``.
    mode: str = "offline"
    project: str = "fgssl"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    #: Run the evaluation suite at the end of training.
    at_end: bool = True
    #: Online kNN monitor every N epochs (0 = off), logged as ``val/knn_top1``.
    knn_every_n_epochs: int = 2
    knn_k: int = 200
    knn_t: float = 0.1
    #: Cap on images per split used by evaluation (null = all). ``debug=smoke`` sets 64.
    max_images: Optional[int] = None
    #: Feature used for evaluation: ``auto`` (the method's embed hook), ``gap`` (plain GAP).
    feature: str = "auto"
    #: Fast probe: weight-decay grid chosen on a 10 % split of train.
    linear_wd_grid: List[float] = field(default_factory=lambda: [0.0, 1e-5, 1e-4, 1e-3])
    linear_max_iter: int = 200
    #: Retrieval chunk size (rows of the similarity matrix held at once).
    retrieval_chunk: int = 1024
    #: Linear protocol: ``fast`` (cached-feature logistic regression, default) or
    #: ``linear_sgd`` (the LCR code's SGD protocol, also run; see eval/linear_sgd.py).
    protocol: str = "fast"
    sgd_epochs: int = 100
    sgd_lr: float = 30.0
    sgd_weight_decay: float = 0.0
    sgd_batch_size: int = 256
    #: Fractions of sgd_epochs at which the lr is multiplied by 0.1 (60 and 80 of 100).
    sgd_milestones: List[float] = field(default_factory=lambda: [0.6, 0.8])
    #: Localisation score (pointing game, part hit rate of Grad-CAM and LCR attention peaks)
    #: on datasets that ship CUB boxes and parts (``data=cub``); skipped for the others.
    localisation: bool = True
    #: Part hit radius, as a fraction of the crop side.
    part_radius: float = 0.15
    #: ``evaluate.py ckpt=colorhist``: bins per RGB channel of the joint colour histogram (bins**3 dims).
    colorhist_bins: int = 8
    #: Learning curve: the full evaluation every N epochs (and once before training), appended to
    #: ``curve.json`` in the run dir (0 = off; the end-of-training evaluation is always run).
    every_n_epochs: int = 0


@dataclass
class FiguresConfig:
    #: More checkpoints shown beside ``ckpt`` in the Grad-CAM figure (e.g. +SYN, +LCR).
    compare: List[str] = field(default_factory=list)
    #: A multirun directory of an alpha sweep (experiment=syn_alpha_sweep) for Fig. 5.
    sweep_dir: Optional[str] = None
    #: The SSL method whose jobs the alpha sweep plots, when ``sweep_dir`` holds several.
    sweep_method: Optional[str] = None
    #: Where the PNGs go; default ``<run dir>/figures`` (or the sweep dir).
    out_dir: Optional[str] = None
    num_images: int = 8


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    rationale: RationaleConfig = field(default_factory=RationaleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    figures: FiguresConfig = field(default_factory=FiguresConfig)
    seed: int = 0
    #: Free-form run name (shown in wandb and the metrics table).
    name: str = "${method.name}-${data.name}"
    #: Checkpoint to evaluate (evaluate.py) -- ``random`` for an untrained network.
    ckpt: Optional[str] = None
    #: Where checkpoints, metrics.json and figures go; defaults to Hydra's job dir.
    out_dir: Optional[str] = None
    #: Resume from the last checkpoint in out_dir if the config is unchanged.
    resume: bool = True


def run_slug(overrides: str) -> str:
    """Directory-safe name for a job's command-line overrides (``default`` when none).

    Used in ``hydra.run.dir`` so that rerunning the same command lands in the same
    directory and can resume from its last checkpoint.
    """
    if not overrides:
        return "default"
    slug = "".join(c if c.isalnum() or c in ".-_" else "_" for c in overrides)
    if len(slug) > 100:
        slug = slug[:80] + "-" + hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return slug


def register_configs() -> None:
    """Register the schema (so ``conf/config.yaml`` can extend it) and the ``fgssl_slug`` resolver."""
    if not OmegaConf.has_resolver("fgssl_slug"):
        OmegaConf.register_new_resolver("fgssl_slug", lambda s: run_slug(str(s or "")))
    cs = ConfigStore.instance()
    cs.store(name="fgssl_schema", node=Config)


__all__ = [
    "Config",
    "DataConfig",
    "BackboneConfig",
    "MethodConfig",
    "SynthesisConfig",
    "RationaleConfig",
    "TrainerConfig",
    "LoggerConfig",
    "EvalConfig",
    "register_configs",
    "MISSING",
]

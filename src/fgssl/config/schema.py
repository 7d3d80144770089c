"""Structured configuration schema for fgssl.

The dataclasses below are the groups every run has (data, backbone, method, trainer, logger, eval, figures);
each method extends :class:`MethodConfig` and each regularizer brings its own group's dataclass
(:mod:`fgssl.config.registry` assembles the root). The root is registered in Hydra's ConfigStore as
``fgssl_schema`` and ``conf/config.yaml`` lists it first in its defaults, so the whole tree is in *struct*
mode: a misspelt key such as ``data.rot=1`` fails with an error that names ``rot``. Choices are enums
(:mod:`fgssl.config.choices`), numeric ranges sit in each field's metadata (:func:`bounded`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fgssl.config.choices import (
    Accelerator,
    Backbone,
    Dataset,
    Feature,
    Logger,
    OnBadImage,
    Pipeline,
    Protocol,
    Stem,
    WandbMode,
)

#: Lightning's ``trainer.precision`` flags.
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "64-true", "32", "16", "bf16", "64")


def bounded(default: Any, *, ge: Optional[float] = None, gt: Optional[float] = None, le: Optional[float] = None,
            lt: Optional[float] = None) -> Any:
    """A numeric field with its allowed range, checked by :func:`fgssl.config.validate.validate` when the
    config is composed (None, where the type allows it, is always accepted)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"bounds": bounds})


@dataclass
class DataConfig:
    #: ``cub53`` (embedded), ``cub``, ``cars``, ``aircraft`` or ``imagefolder``.
    name: Dataset = Dataset.cub53
    #: Dataset root. For ``cub53`` it defaults to the copy vendored in the repo.
    root: Optional[str] = None
    #: ``cub``/``aircraft``/``cars``: when the dataset folder under ``root`` is missing, run
    #: ``python -m fgssl.data.prepare`` first (downloads). Off by default: never download silently.
    download: bool = False
    #: Side of the square crops fed to the network (train views and eval crops).
    image_size: int = bounded(64, ge=8)
    #: Per-process batch size for pre-training.
    batch_size: int = bounded(64, ge=2)
    #: Batch size for feature extraction.
    eval_batch_size: int = bounded(256, ge=1)
    num_workers: int = bounded(2, ge=0)
    #: Input pipeline: ``device`` (decode once into a uint8 cache held on the training device, both
    #: views augmented there in batches), ``workers`` (PIL decode + per-image torchvision augmentation in
    #: loader workers, for datasets far larger than memory) or ``auto`` (device when the decoded dataset
    #: fits ``cache_budget_gb``). See docs/data_pipeline.md.
    pipeline: Pipeline = Pipeline.auto
    #: Memory budget of the device pipeline's decoded cache, in GiB (GPU memory, else pinned host memory).
    cache_budget_gb: float = bounded(4.0, ge=0)
    #: Where decoded caches are stored (keyed by file list, file sizes and side); null = $FGSSL_CACHE_DIR
    #: or ~/.cache/fgssl.
    cache_dir: Optional[str] = None
    #: Workers path only: decode every image once and keep it in RAM as uint8 (shorter side resized to
    #: ``cache_size``). Fast for small sets.
    cache: bool = False
    #: Side of the decoded images (workers cache: shorter side; device cache: S x S, original H x W kept);
    #: null = 2 x image_size.
    cache_size: Optional[int] = bounded(None, ge=8)
    #: Minimum crop scale of RandomResizedCrop (MoCo v2: 0.2).
    crop_min_scale: float = bounded(0.2, gt=0, le=1)
    #: Augmentation strength (defaults = MoCo v2): ColorJitter ranges scaled by ``jitter_strength``
    #: (1.0 = 0.4, 0.4, 0.4, 0.1) applied with ``jitter_p``; grayscale with ``gray_p``; blur with ``blur_p``.
    jitter_strength: float = bounded(1.0, ge=0)
    jitter_p: float = bounded(0.8, ge=0, le=1)
    gray_p: float = bounded(0.2, ge=0, le=1)
    blur_p: float = bounded(0.5, ge=0, le=1)
    #: Corrupt/unreadable images: ``skip`` (warn, count, list in the run dir) or ``error``.
    on_bad_image: OnBadImage = OnBadImage.skip
    #: Verify every image header once at setup (catches zero-byte/corrupt files early).
    verify_images: bool = True


@dataclass
class BackboneConfig:
    #: ``resnet18`` or ``resnet50`` (torchvision).
    name: Backbone = Backbone.resnet18
    #: Path to a local torchvision state_dict (``.pth``); null = random init.
    weights: Optional[str] = None
    #: ``imagenet`` (7x7/2 conv + maxpool) or ``small`` (3x3/1 conv, no maxpool) for tiny images.
    stem: Stem = Stem.imagenet
    #: Zero-initialise the last BatchNorm gamma of every residual block (each block starts as the
    #: identity). null = the method's reference setting: true for SimSiam (its reference code), false
    #: for MoCo v2 (its reference code keeps torchvision's default).
    zero_init_residual: Optional[bool] = None


@dataclass
class MethodConfig:
    """What every SSL method has; each method extends it with its own keys (``fgssl.methods``), so MoCo's
    keys do not appear on SimSiam (``python train.py method=simsiam --cfg job``)."""

    #: The method (its config group option): ``mocov2`` or ``simsiam``.
    name: str = "mocov2"
    #: Base learning rate at batch 256; the effective lr is ``lr * batch * world / 256``.
    lr: float = bounded(0.06, gt=0)
    weight_decay: float = bounded(1e-4, ge=0)
    sgd_momentum: float = bounded(0.9, ge=0, lt=1)
    warmup_epochs: float = bounded(0.0, ge=0)
    #: Projector output dimension (MoCo: 256, SimSiam: 2048).
    proj_dim: int = bounded(256, ge=1)
    #: Projector hidden dimension; null = the backbone's feature dimension C.
    proj_hidden: Optional[int] = bounded(None, ge=1)


@dataclass
class TrainerConfig:
    accelerator: Accelerator = Accelerator.cpu
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = bounded(1, ge=1)
    #: Lightning's precision flag.
    precision: str = field(default="32-true", metadata={"choices": PRECISIONS})
    max_epochs: int = bounded(6, ge=1)
    sync_batchnorm: bool = False
    #: Train on at most this many batches per epoch (a whole number >= 1, so 1 = one batch), or on
    #: this fraction of the epoch (< 1); null = the whole epoch.
    limit_train_batches: Optional[float] = bounded(None, gt=0)
    log_every_n_steps: int = bounded(10, ge=1)
    gradient_clip_val: Optional[float] = bounded(None, ge=0)
    deterministic: bool = False
    enable_progress_bar: bool = True
    channels_last: bool = False
    #: ``torch.compile`` the backbones (online and momentum encoder).
    compile: bool = False
    #: Stop when the collapse indicator (SimSiam) stays below this for
    #: ``collapse_patience`` steps (0 = off).
    collapse_threshold: float = bounded(1e-3, ge=0)
    collapse_patience: int = bounded(50, ge=1)
    #: Also rewrite ``checkpoints/last.ckpt`` every N training steps (batches, whatever the number
    #: of optimizers), so a kill in the middle of a long epoch costs at most N steps; 0 (or less) =
    #: epoch ends only.
    ckpt_every_n_steps: int = 500
    #: Also keep ``checkpoints/epochNNN.ckpt`` every N epochs (0 = keep only ``last.ckpt``: a
    #: ResNet-18 MoCo v2 checkpoint is ~150 MB, a ResNet-50 one ~700 MB).
    keep_every_n_epochs: int = bounded(0, ge=0)
    #: Lightning's profiler: ``simple`` (time per hook, incl. the wait for the next training batch,
    #: ``[_TrainingEpochLoop].train_dataloader_next``) or ``advanced`` (cProfile); the report is printed at
    #: the end and written to ``<run dir>/fit-profile.txt``. null = off.
    profiler: Optional[str] = field(default=None, metadata={"choices": ("simple", "advanced")})


@dataclass
class LoggerConfig:
    #: ``wandb``, ``csv`` or ``none``.
    name: Logger = Logger.wandb
    #: wandb mode: ``offline`` (default, no account needed), ``online`` or ``disabled``.
    mode: WandbMode = WandbMode.offline
    project: str = "fgssl"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    #: Run the evaluation suite at the end of training.
    at_end: bool = True
    #: Online kNN monitor every N epochs (0 = off), logged as ``val/knn_top1``.
    knn_every_n_epochs: int = bounded(2, ge=0)
    knn_k: int = bounded(200, ge=1)
    knn_t: float = bounded(0.1, gt=0)
    #: Cap on images per split used by evaluation (null = all). ``debug=smoke`` sets 64.
    max_images: Optional[int] = bounded(None, ge=1)
    #: Feature used for evaluation: ``auto`` (the method's embed hook), ``gap`` (plain GAP).
    feature: Feature = Feature.auto
    #: Fast probe: weight-decay grid, chosen by stratified k-fold cross-validation on train.
    linear_wd_grid: List[float] = field(default_factory=lambda: [0.0, 1e-5, 1e-4, 1e-3])
    linear_max_iter: int = bounded(200, ge=1)
    #: Folds of that cross-validation (1 = one 10 % hold-out split, fgssl's probe before 2026-12-02).
    linear_folds: int = bounded(5, ge=1)
    #: Retrieval chunk size (rows of the similarity matrix held at once).
    retrieval_chunk: int = bounded(1024, ge=1)
    #: Linear protocol: ``fast`` (cached-feature logistic regression, default) or
    #: ``linear_sgd`` (the LCR code's SGD protocol, also run; see eval/linear_sgd.py).
    protocol: Protocol = Protocol.fast
    sgd_epochs: int = bounded(100, ge=1)
    sgd_lr: float = bounded(30.0, gt=0)
    sgd_weight_decay: float = bounded(0.0, ge=0)
    sgd_batch_size: int = bounded(256, ge=1)
    #: Fractions of sgd_epochs at which the lr is multiplied by 0.1 (60 and 80 of 100).
    sgd_milestones: List[float] = field(default_factory=lambda: [0.6, 0.8])
    #: Localisation score (pointing game, part hit rate of Grad-CAM and LCR attention peaks)
    #: on datasets that ship CUB boxes and parts (``data=cub``); skipped for the others.
    localisation: bool = True
    #: Part hit radius, as a fraction of the crop side.
    part_radius: float = bounded(0.15, gt=0, le=1)
    #: ``evaluate.py ckpt=colorhist``: bins per RGB channel of the joint colour histogram (bins**3 dims).
    colorhist_bins: int = bounded(8, ge=1)
    #: Learning curve: the full evaluation every N epochs (and once before training), appended to
    #: ``curve.json`` in the run dir (0 = off; the end-of-training evaluation is always run).
    every_n_epochs: int = bounded(0, ge=0)


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
    num_images: int = bounded(8, ge=1)


@dataclass
class BaseConfig:
    """The root schema without the regularizer groups, which plug-ins add (``registry.root_schema``)."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
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
    #: Per-method values an experiment sets for whichever method runs (``recipe.mocov2.queue_size``): method
    #: configs are per method, so an experiment cannot set ``method.queue_size`` for SimSiam; each method's
    #: YAML reads its own entries (``conf/method/mocov2.yaml``).
    recipe: Dict[str, Any] = field(default_factory=dict)


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

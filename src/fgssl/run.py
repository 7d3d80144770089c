"""What ``train.py`` and ``evaluate.py`` do, as plain functions of a composed config."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from fgssl.callbacks.checkpoint import LastCheckpoint
from fgssl.callbacks.collapse import CollapseGuard
from fgssl.callbacks.curve import LearningCurve
from fgssl.callbacks.knn import KnnMonitor
from fgssl.callbacks.rng import RngState
from fgssl.cluster import apply_cluster_env, cluster_plugins
from fgssl.data.datamodule import FGVRDataModule
from fgssl.errors import FgsslError
from fgssl.eval.suite import format_table, run_evaluation, write_metrics
from fgssl.factory import build_model
from fgssl.fsio import checkpoint_io
from fgssl.layout import RunLayout
from fgssl.lifecycle import GracefulStop
from fgssl.methods.progress import train_steps
from fgssl.nets.backbones import compile_backbones
from fgssl.nets.global_bn import convert_to_global_bn
from fgssl.preflight import FLOORS  # ckpt=random / colorhist: the non-learned baselines
from fgssl.rundir import (
    announce_run_dir,
    check_checkpoint,
    eval_metrics_name,
    eval_out_dir,
    load_trained,
    report_bad_images,
    run_dir,
    same_run_config,
    save_config,
    wandb_run_id,
)


# ---------------------------------------------------------------------- logger
def hydra_job_info() -> Dict[str, Optional[str]]:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:
        return {"multirun": None, "sweep_dir": None, "job": None}
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "multirun": "1" if multirun else None,
        "sweep_dir": str(hc.sweep.dir) if multirun else None,
        "job": hc.job.override_dirname or None,
    }


# ---------------------------------------------------------------------- pieces
def build_logger(cfg: DictConfig, out: Path, resuming: bool = False):
    lg = cfg.logger
    if lg.name == "none":
        return False
    if lg.name == "csv":  # appends on resume (Lightning's CSVLogger deletes the old log): fgssl.loggers
        from fgssl.loggers import csv_logger

        return csv_logger(out, RunLayout(out).last if resuming else None)
    if lg.name == "wandb":
        if lg.mode not in ("offline", "online", "disabled"):
            raise FgsslError(f"logger.mode={lg.mode!r} must be offline, online or disabled")
        info = hydra_job_info()
        group = lg.group or (Path(info["sweep_dir"]).name if info["sweep_dir"] else None)
        name = cfg.name + (f"[{info['job']}]" if info["multirun"] and info["job"] else "")
        os.environ.setdefault("WANDB_SILENT", "true")
        return pl.loggers.WandbLogger(
            project=lg.project, entity=lg.entity, group=group, name=name, tags=list(lg.tags),
            save_dir=str(out), mode=lg.mode, config=OmegaConf.to_container(cfg, resolve=True),
            id=wandb_run_id(out, resuming), resume="allow",  # a resumed run continues its wandb run
        )
    raise FgsslError(f"logger.name={lg.name!r} must be wandb, csv or none")


def logger_note(cfg: DictConfig) -> str:
    """The logger in use, for the start-up line; says so when it is ``debug=smoke``'s CSV (not the default wandb)."""
    text = f"logger {cfg.logger.name}" + (f" ({cfg.logger.mode})" if cfg.logger.name == "wandb" else "")
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
    except ValueError:  # not under Hydra
        return text
    if choices.get("debug") == "smoke" and choices.get("logger") == "csv":
        text += " (debug=smoke logs to CSV; add logger=wandb for wandb)"
    return text


def finish_logger(logger) -> None:
    """Write what the logger holds (the final test metrics are logged after ``fit``) and close the
    wandb run so each multirun job gets its own run."""
    if logger:
        logger.save()
    if isinstance(logger, pl.loggers.WandbLogger):
        import wandb

        wandb.finish()


def build_trainer(cfg: DictConfig, out: Path, logger, callbacks: List[pl.Callback]) -> pl.Trainer:
    t, e = cfg.trainer, cfg.eval
    every = e.knn_every_n_epochs
    sync_bn = bool(t.sync_batchnorm) and not cpu_run(cfg)  # CPU: GlobalBatchNorm, see train()
    keep = int(t.keep_every_n_epochs)  # >= 0: checked when the config is composed (fgssl.config.validate)
    # last.ckpt: every epoch end and every ckpt_every_n_steps steps (a kill costs at most that many)
    last = LastCheckpoint(str(RunLayout(out).checkpoints), int(t.ckpt_every_n_steps))
    ckpts: List[pl.Callback] = [last, *stop_callbacks(last)]  # SIGTERM / SIGINT: see fgssl.lifecycle
    if keep:  # epochNNN.ckpt every `keep` epochs, all kept
        ckpts.append(pl.callbacks.ModelCheckpoint(
            dirpath=str(RunLayout(out).checkpoints), filename="epoch{epoch:03d}", auto_insert_metric_name=False,
            save_last=False, save_top_k=-1, every_n_epochs=keep, save_on_train_epoch_end=True,
            enable_version_counter=False))
    kw = dict(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=t.precision, max_epochs=t.max_epochs, sync_batchnorm=sync_bn,
        log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar, default_root_dir=str(out), logger=logger,
        callbacks=[*ckpts, RngState(), CollapseGuard(t.collapse_threshold, t.collapse_patience),
                   *([KnnMonitor(e.knn_k, e.knn_t)] if every > 0 else []), *callbacks],
        num_sanity_val_steps=0, use_distributed_sampler=False,  # the datamodule shards (data/sampling.py)
        # atomic checkpoint writes; a full disk is one clear error (fgssl.fsio); SLURM without Lightning's auto-requeue
        plugins=[checkpoint_io(), *cluster_plugins()],
        check_val_every_n_epoch=every if every > 0 else 1, limit_val_batches=1.0 if every > 0 else 0,
    )
    if t.profiler:  # where a step's time goes (docs/data_pipeline.md: data wait vs compute per pipeline)
        prof = {"simple": pl.profilers.SimpleProfiler, "advanced": pl.profilers.AdvancedProfiler}[t.profiler]
        kw["profiler"] = prof(dirpath=str(out), filename="profile")
    if t.limit_train_batches is not None:
        limit = float(t.limit_train_batches)  # > 0: checked when the config is composed
        # the schema stores a float; Lightning would read 1.0 as "100 %", we read it as "one batch"
        kw["limit_train_batches"] = int(limit) if limit >= 1 and limit.is_integer() else limit
    return pl.Trainer(**kw)


def stop_callbacks(last: LastCheckpoint) -> List[pl.Callback]:
    """The graceful-stop callback when the run is under :func:`fgssl.lifecycle.run_job` (train.py)."""
    from fgssl.callbacks.stop import StopOnSignal

    return [StopOnSignal(GracefulStop.current, last)] if GracefulStop.current is not None else []


def cpu_run(cfg: DictConfig) -> bool:
    acc = cfg.trainer.accelerator
    return acc == "cpu" or (acc == "auto" and not torch.cuda.is_available())


def apply_speed_knobs(method, cfg: DictConfig, world_size: int):
    """channels_last, torch.compile, and CPU global BatchNorm under DDP (``trainer.*`` switches;
    precision, e.g. ``bf16-mixed``, goes to the Trainer)."""
    t = cfg.trainer
    if t.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if t.sync_batchnorm and cpu_run(cfg) and world_size > 1:
        # torch's SyncBatchNorm is GPU-only: the same global-batch statistics through gloo
        convert_to_global_bn(method)
    if t.compile:
        compile_backbones(method)
    return method




def device_of(cfg: DictConfig) -> torch.device:
    acc = cfg.trainer.accelerator
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise FgsslError(f"trainer.accelerator={acc} but no CUDA device is available; use trainer=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


# ---------------------------------------------------------------------- entry points
def _quiet_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # ModelCheckpoint's: config.yaml is saved in checkpoints/ first (no warning that reports lost data is filtered)
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


def _start_point(cfg: DictConfig, run: RunLayout, resuming: bool, trainer: pl.Trainer) -> Optional[str]:
    """The checkpoint ``fit`` resumes from (None: a fresh start, with an earlier run's checkpoints moved
    aside), and the run's config saved in ``checkpoints/``."""
    ckpt_path = None
    if resuming:
        check_checkpoint(run.last)
        ckpt_path = str(run.last)
        print(f"resuming from {run.last}")
    elif run.last.exists() and trainer.is_global_zero:
        keep = run.previous_checkpoints(int(run.last.stat().st_mtime))
        run.checkpoints.rename(keep)
        why = "resume=false" if not cfg.resume else "the config changed"
        print(f"found {run.last} but {why}: starting fresh (old checkpoints moved to {keep})")
    if trainer.is_global_zero:
        save_config(cfg, run.config)
    return ckpt_path


def _final_evaluation(cfg: DictConfig, method, dm, trainer: pl.Trainer, logger, out: Path) -> Dict[str, float]:
    """The end-of-training evaluation (rank 0): ``metrics.json``, the logger, the table."""
    metrics = run_evaluation(method, dm, cfg, device_of(cfg), progress=cfg.trainer.enable_progress_bar)
    steps = train_steps(trainer)
    write_metrics(metrics, out, {"run_dir": str(out), "epochs": trainer.current_epoch, "steps": steps})
    if logger:
        logger.log_metrics(metrics, step=steps)
    print(format_table(metrics, f"{cfg.name}: {cfg.method.name} / {cfg.data.name}"))
    print(f"metrics written to {RunLayout(out).metrics}")
    return metrics


def train(cfg: DictConfig) -> Dict[str, float]:
    """Pre-train, checkpoint, evaluate; returns the final metrics (rank 0)."""
    apply_cluster_env(cfg)  # SLURM / torchrun: trainer.num_nodes, devices, strategy (fgssl.cluster)
    out = run_dir(cfg).resolve()
    out.mkdir(parents=True, exist_ok=True)
    announce_run_dir(out)
    _quiet_warnings()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")

    run = RunLayout(out)
    resuming = bool(cfg.resume and run.last.exists() and same_run_config(run.config, cfg))
    logger = build_logger(cfg, out, resuming)
    trainer = build_trainer(cfg, out, logger, [])
    dm = FGVRDataModule(cfg.data, cfg.eval, str(out), trainer.world_size, cfg.seed)
    dm.setup()
    method = apply_speed_knobs(build_model(cfg, dm.num_train, trainer.world_size), cfg, trainer.world_size)
    for reg in method.regularizers:
        trainer.callbacks.extend(reg.callbacks())
    if cfg.eval.every_n_epochs > 0:  # the learning curve: curve.json, see callbacks/curve.py
        device = device_of(cfg)
        trainer.callbacks.append(LearningCurve(out, cfg.eval.every_n_epochs, resuming=resuming, evaluate=lambda m: (
            run_evaluation(m, dm, cfg, device, progress=False))))
    ckpt_path = _start_point(cfg, run, resuming, trainer)
    if trainer.is_global_zero:
        n_params = sum(p.numel() for p in method.parameters() if p.requires_grad)
        print(f"fgssl: {cfg.method.name} on {cfg.data.name} ({dm.num_train} train / {len(dm.test_samples)} test "
              f"images, {dm.num_classes} classes), {cfg.backbone.name} {cfg.data.image_size}px, "
              f"{n_params / 1e6:.1f}M trainable params, {logger_note(cfg)}, run dir {out}")
    trainer.fit(method, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)

    metrics: Dict[str, float] = {}
    if trainer.is_global_zero:
        if cfg.eval.at_end:
            metrics = _final_evaluation(cfg, method, dm, trainer, logger, out)
        report_bad_images(out)
    finish_logger(logger)
    return metrics


def _floor_model(cfg: DictConfig):
    """(model, data module) of a floor: the untrained network (``ckpt=random``) or the colour histogram."""
    dm = FGVRDataModule(cfg.data, cfg.eval, None)
    dm.setup()
    if cfg.ckpt == "colorhist":
        from fgssl.eval.colorhist import ColorHistogram

        cfg.eval.localisation = False  # no network: no Grad-CAM map to localise with
        return ColorHistogram(int(cfg.eval.colorhist_bins)), dm
    return build_model(cfg, dm.num_train, 1), dm


def evaluate(cfg: DictConfig) -> Dict[str, float]:
    """Evaluate ``cfg.ckpt``, or a floor: an untrained network (``ckpt=random``) or the colour
    histogram of the image (``ckpt=colorhist``), both through the same evaluation code."""
    if not cfg.ckpt:
        raise FgsslError("evaluate.py needs ckpt=PATH (a train.py checkpoint), ckpt=random or ckpt=colorhist")
    ckpt = None
    pl.seed_everything(cfg.seed, verbose=False)
    if cfg.ckpt in FLOORS:
        run_cfg = cfg
        method, dm = _floor_model(cfg)
    else:  # evaluation knobs come from the command line
        trained = load_trained(cfg.ckpt, {"eval": cfg.eval, "data.num_workers": cfg.data.num_workers,
                                          "trainer.accelerator": cfg.trainer.accelerator})
        method, dm, run_cfg, ckpt = trained.model, trained.data, trained.cfg, trained.ckpt
    out = eval_out_dir(cfg, ckpt)
    metrics = run_evaluation(method, dm, run_cfg, device_of(run_cfg), progress=cfg.trainer.enable_progress_bar)
    out.mkdir(parents=True, exist_ok=True)
    path = out / eval_metrics_name(str(cfg.ckpt), cfg.eval)
    tmp = write_metrics(metrics, out / ".tmp_eval", {"ckpt": str(cfg.ckpt),
                                                       "eval": OmegaConf.to_container(cfg.eval, resolve=True)})
    tmp.replace(path)
    tmp.parent.rmdir()
    print(format_table(metrics, f"evaluate {cfg.ckpt if ckpt is None else f'{out.name}/{ckpt.name}'}"))
    print(f"metrics written to {path}")
    return metrics

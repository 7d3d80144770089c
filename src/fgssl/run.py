"""What ``train.py`` and ``evaluate.py`` do, as plain functions of a composed config."""

from __future__ import annotations

import os
import sys
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
from fgssl.cluster import apply_cluster_env, cluster_plugins, shared_run_dir
from fgssl.data.datamodule import FGVRDataModule
from fgssl.data.images import read_bad_log
from fgssl.errors import FgsslError
from fgssl.eval.evaluate import format_table, run_evaluation, write_metrics
from fgssl.factory import build_model
from fgssl.fsio import checkpoint_io
from fgssl.lifecycle import GracefulStop, is_launching_process
from fgssl.methods.progress import train_steps
from fgssl.nets.backbones import compile_backbones
from fgssl.nets.global_bn import convert_to_global_bn
from fgssl.preflight import FLOORS  # ckpt=random / colorhist: the non-learned baselines

RUN_DIR_ENV = "FGSSL_RUN_DIR"
CONFIG_NAME = "config.yaml"


# ---------------------------------------------------------------------- paths
def run_dir(cfg: DictConfig) -> Path:
    """The job's output directory.

    DDP worker processes re-run the script; they find the parent's directory in
    ``FGSSL_RUN_DIR`` (Lightning's launcher sets LOCAL_RANK for them).
    """
    if cfg.out_dir:
        return Path(cfg.out_dir)
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    try:
        from hydra.core.hydra_config import HydraConfig

        d = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under Hydra (tests calling run.train directly)
        d = Path("outputs") / "run"
    return shared_run_dir(d)  # torchrun: every rank uses rank 0's (fgssl.cluster)


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
WANDB_ID_FILE = "wandb_run_id.txt"


def wandb_run_id(out: Path, resuming: bool) -> str:
    """The wandb run id of this run directory: the saved one when resuming, a new one otherwise."""
    path = out / WANDB_ID_FILE
    if resuming and path.exists():
        return path.read_text().strip()
    import secrets
    import string

    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # wandb's id format
    if is_launching_process():  # global rank 0 (not each node's local rank 0)
        path.write_text(run_id + "\n")
    return run_id


def build_logger(cfg: DictConfig, out: Path, resuming: bool = False):
    lg = cfg.logger
    if lg.name == "none":
        return False
    if lg.name == "csv":  # appends on resume (Lightning's CSVLogger deletes the old log): fgssl.loggers
        from fgssl.loggers import csv_logger

        return csv_logger(out, out / "checkpoints" / "last.ckpt" if resuming else None)
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
    last = LastCheckpoint(str(out / "checkpoints"), int(t.ckpt_every_n_steps))
    ckpts: List[pl.Callback] = [last, *stop_callbacks(last)]  # SIGTERM / SIGINT: see fgssl.lifecycle
    if keep:  # epochNNN.ckpt every `keep` epochs, all kept
        ckpts.append(pl.callbacks.ModelCheckpoint(
            dirpath=str(out / "checkpoints"), filename="epoch{epoch:03d}", auto_insert_metric_name=False,
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


def save_config(cfg: DictConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)


def same_run_config(saved: Path, cfg: DictConfig) -> bool:
    """Whether ``cfg`` is the config saved at ``saved`` (an automatic MoCo queue size, filled in at
    setup from the dataset size, counts as equal to the value it resolved to)."""
    if not saved.exists():
        return False
    old = OmegaConf.load(saved)
    now = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if "queue_size" in now.method and not now.method.queue_size and "queue_size" in old.method:
        now.method.queue_size = old.method.queue_size
    return old == now


def load_run_config(ckpt: Path) -> DictConfig:
    """The resolved config saved next to a checkpoint (``checkpoints/config.yaml``), laid over the
    schema: a key added to fgssl after the checkpoint was trained takes its default (which keeps the
    old behaviour), so older checkpoints stay loadable; a key the schema does not know is one error."""
    from omegaconf.errors import OmegaConfBaseException

    from fgssl.config.registry import fit_saved

    for cand in (ckpt.parent / CONFIG_NAME, ckpt.parent.parent / "checkpoints" / CONFIG_NAME):
        if cand.exists():
            try:
                return fit_saved(OmegaConf.load(cand))
            except OmegaConfBaseException as e:
                raise FgsslError(f"{cand} does not fit this version of fgssl's config: "
                                 f"{str(e).splitlines()[0]}") from None
    raise FgsslError(f"no {CONFIG_NAME} next to checkpoint {ckpt}; it is written by train.py in the run's "
                     f"checkpoints/ folder")


def _load_failure(e: Exception) -> str:
    """Why torch could not load a file, in one line and without torch's advice to retry with
    ``weights_only=False`` (which would run whatever code the file holds)."""
    text = str(e)
    if "Weights only load failed" in text:
        why = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line), "")
        return f"it holds objects a weights-only load refuses to build; {why}".rstrip("; ")
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}"


def read_checkpoint(path: Path, what: str) -> dict:
    """A Lightning checkpoint's dict, loaded with ``weights_only=True``; anything unreadable (truncated
    by a kill during a copy, tampered with, not a checkpoint) is one :class:`FgsslError` starting with
    ``what``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or "state_dict" not in obj:
            raise ValueError("no 'state_dict' in it")
    except Exception as e:  # noqa: BLE001
        raise FgsslError(f"{what} ({_load_failure(e)})") from None
    return obj


def check_checkpoint(path: Path) -> None:
    """Fail before Lightning's restore, with a way out, if the checkpoint to resume from is unreadable."""
    read_checkpoint(path, f"cannot resume from {path}: not a readable checkpoint. Move it away, or rerun "
                          f"with resume=false (the old checkpoints are then kept in checkpoints.previous-*)")


def load_checkpoint_weights(method, ckpt: Path) -> None:
    """Load the ``state_dict`` of a Lightning checkpoint strictly, with weights_only=True."""
    if not ckpt.is_file():
        raise FgsslError(f"ckpt={ckpt}: file not found")
    state = read_checkpoint(ckpt, f"ckpt={ckpt}: not a readable fgssl checkpoint")["state_dict"]
    own = method.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise FgsslError(f"ckpt={ckpt} does not match the model built from its config: missing keys "
                         f"{missing[:10]} ({len(missing)}), unexpected keys {unexpected[:10]} ({len(unexpected)})")
    method.load_state_dict(state, strict=True)


def device_of(cfg: DictConfig) -> torch.device:
    acc = cfg.trainer.accelerator
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise FgsslError(f"trainer.accelerator={acc} but no CUDA device is available; use trainer=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def report_bad_images(out: Path) -> None:
    bad = read_bad_log(out / "bad_images.txt")
    if bad:
        print(f"\n{len(bad)} bad image(s) were skipped (listed in {out / 'bad_images.txt'}):", file=sys.stderr)
        for p, why in bad[:20]:
            print(f"  {p}: {why}", file=sys.stderr)
        if len(bad) > 20:
            print(f"  ... and {len(bad) - 20} more", file=sys.stderr)


# ---------------------------------------------------------------------- entry points
def train(cfg: DictConfig) -> Dict[str, float]:
    """Pre-train, checkpoint, evaluate; returns the final metrics (rank 0)."""
    apply_cluster_env(cfg)  # SLURM / torchrun: trainer.num_nodes, devices, strategy (fgssl.cluster)
    out = run_dir(cfg).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        os.environ[RUN_DIR_ENV] = str(out)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # ModelCheckpoint's: config.yaml is saved in checkpoints/ first (no warning that reports lost data is filtered)
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")

    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resuming = bool(cfg.resume and last.exists() and same_run_config(ckpt_dir / CONFIG_NAME, cfg))

    logger = build_logger(cfg, out, resuming)
    trainer = build_trainer(cfg, out, logger, [])
    dm = FGVRDataModule(cfg.data, cfg.eval, str(out), trainer.world_size, cfg.seed)
    dm.setup()
    method = build_model(cfg, dm.num_train, trainer.world_size)
    method = apply_speed_knobs(method, cfg, trainer.world_size)
    for reg in method.regularizers:
        trainer.callbacks.extend(reg.callbacks())
    if cfg.eval.every_n_epochs > 0:  # the learning curve: curve.json, see callbacks/curve.py
        device = device_of(cfg)
        trainer.callbacks.append(LearningCurve(out, cfg.eval.every_n_epochs, resuming=resuming, evaluate=lambda m: (
            run_evaluation(m, dm, cfg, device, progress=False))))
    ckpt_path = None
    if resuming:
        check_checkpoint(last)
        ckpt_path = str(last)
        print(f"resuming from {last}")
    elif last.exists() and trainer.is_global_zero:
        keep = ckpt_dir.with_name(f"checkpoints.previous-{int(last.stat().st_mtime)}")
        ckpt_dir.rename(keep)
        why = "resume=false" if not cfg.resume else "the config changed"
        print(f"found {last} but {why}: starting fresh (old checkpoints moved to {keep})")
    if trainer.is_global_zero:
        save_config(cfg, ckpt_dir / CONFIG_NAME)
    if trainer.is_global_zero:
        n_params = sum(p.numel() for p in method.parameters() if p.requires_grad)
        print(f"fgssl: {cfg.method.name} on {cfg.data.name} ({dm.num_train} train / {len(dm.test_samples)} test "
              f"images, {dm.num_classes} classes), {cfg.backbone.name} {cfg.data.image_size}px, "
              f"{n_params / 1e6:.1f}M trainable params, {logger_note(cfg)}, run dir {out}")
    trainer.fit(method, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)

    metrics: Dict[str, float] = {}
    if trainer.is_global_zero:
        if cfg.eval.at_end:
            metrics = run_evaluation(method, dm, cfg, device_of(cfg), progress=cfg.trainer.enable_progress_bar)
            steps = train_steps(trainer)
            write_metrics(metrics, out, {"run_dir": str(out), "epochs": trainer.current_epoch, "steps": steps})
            if logger:
                logger.log_metrics(metrics, step=steps)
            print(format_table(metrics, f"{cfg.name}: {cfg.method.name} / {cfg.data.name}"))
            print(f"metrics written to {out / 'metrics.json'}")
        report_bad_images(out)
    finish_logger(logger)
    return metrics


#: ``eval.*`` keys that do not change an evaluation's numbers (training-time or memory knobs).
EVAL_NAME_IGNORED = ("at_end", "knn_every_n_epochs", "every_n_epochs", "retrieval_chunk")


def eval_metrics_name(ckpt: str, eval_cfg: DictConfig) -> str:
    """The file an ``evaluate.py`` run writes: ``metrics_eval_<checkpoint>[_<key>-<value>...].json``, named by
    the checkpoint file (``random`` for an untrained network) and every ``eval.*`` setting that differs
    from the schema's default, so two different evaluations never share a file (``train.py`` writes
    ``metrics.json``)."""
    from fgssl.config import EvalConfig, run_slug

    default = OmegaConf.structured(EvalConfig)
    parts = [Path(ckpt).stem]  # last.ckpt -> last; ckpt=random -> random, ckpt=colorhist -> colorhist
    for key in sorted(eval_cfg):
        if key in EVAL_NAME_IGNORED or key not in default or eval_cfg[key] == default[key]:
            continue
        value = eval_cfg[key]
        value = ",".join(map(str, value)) if OmegaConf.is_list(value) else value
        parts.append(f"{key}-{value}")
    return f"metrics_eval_{run_slug('_'.join(parts))}.json"


def eval_out_dir(cfg: DictConfig, ckpt: Optional[Path]) -> Path:
    """Where an evaluation writes: ``out_dir`` when given, else the checkpoint's run directory (the
    folder above ``checkpoints/``), else (a floor: ``ckpt=random``/``colorhist``) ``outputs/<name>/<ckpt>``."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    if ckpt is not None:
        return ckpt.parent.parent if ckpt.parent.name.startswith("checkpoints") else ckpt.parent
    return Path("outputs") / str(cfg.name) / str(cfg.ckpt)


def evaluate(cfg: DictConfig) -> Dict[str, float]:
    """Evaluate ``cfg.ckpt``, or a floor: an untrained network (``ckpt=random``) or the colour
    histogram of the image (``ckpt=colorhist``), both through the same evaluation code."""
    from fgssl.preflight import check_checkpoint_file

    if not cfg.ckpt:
        raise FgsslError("evaluate.py needs ckpt=PATH (a train.py checkpoint), ckpt=random or ckpt=colorhist")
    ckpt = None
    if cfg.ckpt in FLOORS:
        run_cfg = cfg
    else:
        ckpt = check_checkpoint_file("ckpt", cfg.ckpt).resolve()
        run_cfg = load_run_config(ckpt)
        run_cfg.eval = cfg.eval  # evaluation knobs come from the command line
        run_cfg.data.num_workers = cfg.data.num_workers
        run_cfg.trainer.accelerator = cfg.trainer.accelerator
    out = eval_out_dir(cfg, ckpt)
    pl.seed_everything(cfg.seed, verbose=False)
    dm = FGVRDataModule(run_cfg.data, run_cfg.eval, None)
    dm.setup()
    if cfg.ckpt == "colorhist":
        from fgssl.eval.colorhist import ColorHistogram

        method = ColorHistogram(int(cfg.eval.colorhist_bins))
        run_cfg.eval.localisation = False  # no network: no Grad-CAM map to localise with
    else:
        method = build_model(run_cfg, dm.num_train, 1)
    if ckpt is not None:
        load_checkpoint_weights(method, ckpt)
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

"""The run directory: where a run writes (:func:`run_dir`), the config and checkpoints it keeps, and
:func:`load_trained`, the one way back from a checkpoint to a trained model (evaluate, figures, the
notebook). The names of its files are in :mod:`fgssl.layout`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from omegaconf import DictConfig, OmegaConf

from fgssl import layout
from fgssl.errors import FgsslError
from fgssl.layout import (  # noqa: F401 - where the run directory is: re-exported
    RANK_VARS,
    RUN_DIR_ENV,
    RunLayout,
    announce_run_dir,
    is_launching_process,
)

CONFIG_NAME = layout.CONFIG
# ---------------------------------------------------------------------- files
def run_dir(cfg: DictConfig) -> Path:
    """The run directory (:func:`fgssl.layout.run_dir`); Hydra's job folder under torchrun is global rank 0's
    for every rank (:func:`fgssl.cluster.shared_run_dir`)."""
    from fgssl.cluster import shared_run_dir

    own = layout.run_dir(cfg)
    if cfg.out_dir or (not is_launching_process() and os.environ.get(RUN_DIR_ENV)):
        return own
    return shared_run_dir(own)  # torchrun: every rank uses rank 0's


def wandb_run_id(out: Path, resuming: bool) -> str:
    """The wandb run id of this run directory: the saved one when resuming, a new one otherwise."""
    path = RunLayout(out).wandb_id
    if resuming and path.exists():
        return path.read_text().strip()
    import secrets
    import string

    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # wandb's id format
    if is_launching_process():  # global rank 0 (not each node's local rank 0)
        path.write_text(run_id + "\n")
    return run_id


def report_bad_images(out: Path) -> None:
    from fgssl.data.images import read_bad_log

    log = RunLayout(out).bad_images
    bad = read_bad_log(log)
    if bad:
        print(f"\n{len(bad)} bad image(s) were skipped (listed in {log}):", file=sys.stderr)
        for p, why in bad[:20]:
            print(f"  {p}: {why}", file=sys.stderr)
        if len(bad) > 20:
            print(f"  ... and {len(bad) - 20} more", file=sys.stderr)


# ---------------------------------------------------------------------- the run's config
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


def read_run_config(path: Path) -> DictConfig:
    """A saved run config laid over the schema: a key added to fgssl after the run was trained takes its
    default (which keeps the old behaviour), so older runs stay loadable; a key the schema does not know
    is one error naming the file. The one place a saved config is read back into a full config."""
    from omegaconf.errors import OmegaConfBaseException

    from fgssl.config.registry import fit_saved
    from fgssl.plugins import load

    load()  # the methods and regularizers register their keys (a notebook may not have run setup())
    try:
        return fit_saved(OmegaConf.load(path))
    except OmegaConfBaseException as e:
        raise FgsslError(f"{path} does not fit this version of fgssl's config: {str(e).splitlines()[0]}") from None


def load_run_config(ckpt: Path) -> DictConfig:
    """The resolved config saved next to a checkpoint (``checkpoints/config.yaml``), through
    :func:`read_run_config`."""
    for cand in (ckpt.parent / CONFIG_NAME, RunLayout(ckpt.parent.parent).config):
        if cand.exists():
            return read_run_config(cand)
    raise FgsslError(f"no {CONFIG_NAME} next to checkpoint {ckpt}; it is written by train.py in the run's "
                     f"{layout.CHECKPOINTS}/ folder")


# ---------------------------------------------------------------------- checkpoints
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
    import torch

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


@dataclass
class Trained:
    """What :func:`load_trained` returns."""

    #: the method with its regularizers and the checkpoint's weights, in eval mode, on the CPU
    model: Any
    #: the data module of the run's dataset (set up: ``test_set``, ``memory_loader()``, ``num_train``, ...)
    data: Any
    #: the run's config (``checkpoints/config.yaml`` over the schema, with the given overrides)
    cfg: DictConfig
    #: the checkpoint, resolved
    ckpt: Path

    @property
    def run(self) -> RunLayout:
        return RunLayout.of_checkpoint(self.ckpt)


def load_trained(ckpt: Union[str, Path], overrides: Optional[Mapping[str, Any]] = None,
                 key: str = "ckpt") -> Trained:
    """Rebuild a trained model from a ``train.py`` checkpoint.

    The config saved next to it (:func:`load_run_config`) is laid over the schema; ``overrides`` (dotted
    keys, e.g. ``{"data.num_workers": 0, "eval": cfg.eval}``) replace values of it, for how the model is
    used now (never what it is); the run's data module is set up, the model built by
    :func:`fgssl.factory.build_model`, and the weights loaded strictly with ``weights_only=True``.
    ``key`` names the setting the path came from, for the error lines."""
    from fgssl.data.datamodule import FGVRDataModule
    from fgssl.factory import build_model
    from fgssl.preflight import check_checkpoint_file

    path = check_checkpoint_file(key, str(ckpt)).resolve()
    cfg = load_run_config(path)
    for name, value in (overrides or {}).items():
        OmegaConf.update(cfg, name, value, merge=False)
    data = FGVRDataModule(cfg.data, cfg.eval, None)
    data.setup()
    model = build_model(cfg, data.num_train, 1)
    load_checkpoint_weights(model, path)
    return Trained(model.eval(), data, cfg, path)


# ---------------------------------------------------------------------- evaluations
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
    for name in sorted(eval_cfg):
        if name in EVAL_NAME_IGNORED or name not in default or eval_cfg[name] == default[name]:
            continue
        value = eval_cfg[name]
        value = ",".join(map(str, value)) if OmegaConf.is_list(value) else value
        parts.append(f"{name}-{value}")
    return RunLayout(".").eval_metrics(run_slug("_".join(parts))).name


def eval_out_dir(cfg: DictConfig, ckpt: Optional[Path]) -> Path:
    """Where an evaluation writes: ``out_dir`` when given, else the checkpoint's run directory (the
    folder above ``checkpoints/``), else (a floor: ``ckpt=random``/``colorhist``) ``outputs/<name>/<ckpt>``."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    if ckpt is not None:
        return RunLayout.of_checkpoint(ckpt).root
    return Path("outputs") / str(cfg.name) / str(cfg.ckpt)

"""The names of the files in a run directory: the one list every writer and reader uses.

A run directory (``train.py``'s Hydra job folder, or ``out_dir``)::

    <run dir>/
      checkpoints/last.ckpt         the file a rerun resumes from (callbacks.guards.LastCheckpoint)
      checkpoints/config.yaml       the resolved config the run was trained with
      checkpoints/epochNNN.ckpt     kept every trainer.keep_every_n_epochs epochs
      checkpoints.previous-<time>/  the checkpoints of an earlier run moved aside (resume=false or a new config)
      metrics.json                  the end-of-training evaluation (train.py)
      metrics_eval_<ckpt>[_<key>-<value>...].json   an evaluate.py run (fgssl.rundir.eval_metrics_name)
      curve.json                    the learning curve (eval.every_n_epochs)
      csv/metrics.csv               logger=csv
      wandb/, wandb_run_id.txt      logger=wandb (the id lets a resumed run and figures.py log to the same run)
      bad_images.txt                images skipped by data.on_bad_image=skip
      error.txt                     a failed job of a sweep (fgssl.lifecycle.run_job)
      .fgssl.lock                   held while a run lives (fgssl.lifecycle.RunLock)
      figures/                      figures.py's default output for a checkpoint of this run

This module sits on the lowest floor (no fgssl import) so that the writers on every floor (data, eval,
callbacks, lifecycle) name the files from here, and every process finds the same folder (:func:`run_dir`,
which imports no Lightning); :mod:`fgssl.rundir` builds the rest of the run directory's behaviour on it
(its config, its checkpoints, :func:`fgssl.rundir.load_trained`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

#: DDP worker processes re-run the entry point; they find their parent's run directory here.
RUN_DIR_ENV = "FGSSL_RUN_DIR"
#: the variables torchrun, SLURM and Lightning's launchers set for every process but the first
RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")

CHECKPOINTS = "checkpoints"
CONFIG = "config.yaml"
LAST = "last.ckpt"
METRICS = "metrics.json"
EVAL_METRICS_PREFIX = "metrics_eval_"
CURVE = "curve.json"
CSV_DIR = "csv"
#: the training log that logger=csv writes (Lightning's CSVLogger file name, in CSV_DIR)
CSV_LOG = f"{CSV_DIR}/metrics.csv"
WANDB_ID = "wandb_run_id.txt"
BAD_IMAGES = "bad_images.txt"
ERROR = "error.txt"
LOCK = ".fgssl.lock"
FIGURES = "figures"
#: a Hydra job folder's record of its command-line overrides
HYDRA_OVERRIDES = ".hydra/overrides.yaml"
HYDRA_CONFIG = ".hydra/config.yaml"


class RunLayout:
    """The paths of one run directory (nothing is created or read here)."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)

    @classmethod
    def of_checkpoint(cls, ckpt: Union[str, Path]) -> "RunLayout":
        """The run directory of a checkpoint: the folder above ``checkpoints/`` (or above an earlier run's
        ``checkpoints.previous-*``), else the checkpoint's own folder."""
        ckpt = Path(ckpt)
        return cls(ckpt.parent.parent if ckpt.parent.name.startswith(CHECKPOINTS) else ckpt.parent)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.root)!r})"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def config(self) -> Path:
        return self.checkpoints / CONFIG

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def curve(self) -> Path:
        return self.root / CURVE

    @property
    def csv_dir(self) -> Path:
        return self.root / CSV_DIR

    @property
    def csv_log(self) -> Path:
        return self.root / CSV_LOG

    @property
    def wandb_id(self) -> Path:
        return self.root / WANDB_ID

    @property
    def bad_images(self) -> Path:
        return self.root / BAD_IMAGES

    @property
    def error(self) -> Path:
        return self.root / ERROR

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def figures(self) -> Path:
        return self.root / FIGURES

    @property
    def hydra_overrides(self) -> Path:
        return self.root / HYDRA_OVERRIDES

    @property
    def hydra_config(self) -> Path:
        return self.root / HYDRA_CONFIG

    def previous_checkpoints(self, stamp: int) -> Path:
        """Where an earlier run's ``checkpoints/`` is moved when a run starts fresh over it."""
        return self.root / f"{CHECKPOINTS}.previous-{stamp}"

    def eval_metrics(self, slug: str) -> Path:
        """``metrics_eval_<slug>.json`` (the slug names the checkpoint and the evaluation settings)."""
        return self.root / f"{EVAL_METRICS_PREFIX}{slug}.json"


# ---------------------------------------------------------------------- where
def is_launching_process() -> bool:
    """Whether this is the first process of its run (global rank 0), the one that holds the run's
    lock: DDP workers started by Lightning, torchrun or srun carry a non-zero rank variable."""
    return all(os.environ.get(v, "0") in ("", "0") for v in RANK_VARS)


def run_dir(cfg: Any) -> Path:
    """The job's output directory: ``out_dir``, else Hydra's job folder.

    DDP worker processes re-run the script; they find the parent's directory in ``FGSSL_RUN_DIR``
    (:func:`announce_run_dir`). Imports no Lightning (the entry point's wrapper calls it before the
    preflight checks).
    """
    if cfg.out_dir:
        return Path(cfg.out_dir)
    if not is_launching_process() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under Hydra (tests calling run.train directly)
        return Path("outputs") / "run"


def announce_run_dir(out: Path) -> None:
    """Tell the DDP worker processes this process is about to start where the run directory is."""
    if is_launching_process():
        os.environ[RUN_DIR_ENV] = str(out)

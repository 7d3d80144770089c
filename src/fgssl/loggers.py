"""A CSV log that survives a resume.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder is not empty (it warns, and the
warning used to be filtered out): a resumed run lost the log of everything before the kill, and
rerunning a finished run left no log at all. :class:`ResumableCSVLogger` keeps Lightning's writer
(same file, same columns, Lightning's own flushing) and changes only what happens to an existing
file: a resumed run keeps the rows of the steps its checkpoint holds and appends after them (the
rows of steps after the checkpoint, written before the kill, are dropped: the resumed run logs them
again, so no row is duplicated); a fresh run in a folder with an old log moves it aside to
``metrics.previous-<time>.csv`` instead of deleting it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from fgssl import layout
from fgssl.fsio import atomic_write_text


def resume_log_step(ckpt: Path) -> int:
    """The first logging step a run resumed from ``ckpt`` writes: the number of training batches the
    checkpoint holds (Lightning logs batch ``n`` (1-based) at step ``n - 1``, and epoch-end rows at the
    step of the epoch's last batch)."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    return int(state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"])


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: Optional[int]):
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resume_step is None:  # a fresh start (resume=false, or a changed config): keep the old log aside
            os.replace(path, path.with_name(f"metrics.previous-{int(path.stat().st_mtime)}.csv"))
            return
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if self._keep(r)]
        text = _csv_text(fields, rows)
        atomic_write_text(path, text)
        self.metrics_keys = sorted(k for k in fields if k)

    def _keep(self, row) -> bool:
        try:
            step = int(float(row.get("step") or 0))
        except ValueError:
            return True
        if any(k.startswith("test/") and row.get(k) not in ("", None) for k in row if k):
            return False  # the final evaluation's row: a resumed run writes it again at its end
        return step < self.resume_step


def _csv_text(fields, rows) -> str:
    import io

    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


class ResumableCSVLogger(pl.loggers.CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/csv/metrics.csv``; ``resume_from``: the checkpoint the run
    resumes from (read when the log is first written, after the run checked it), ``None`` when it
    starts fresh."""

    def __init__(self, save_dir: str, resume_from: Optional[Path] = None):
        super().__init__(save_dir=save_dir, name=layout.CSV_DIR, version="")
        self.resume_from = resume_from

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            step = resume_log_step(self.resume_from) if self.resume_from else None
            self._experiment = _AppendingWriter(self.log_dir, step)
        return self._experiment


def csv_logger(out: Path, resume_from: Optional[Path]) -> ResumableCSVLogger:
    return ResumableCSVLogger(str(out), resume_from)


__all__ = ["ResumableCSVLogger", "csv_logger", "resume_log_step"]

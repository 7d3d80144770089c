"""The end of a Hydra multirun: which jobs finished and which failed.

:class:`SweepSummary` is a Hydra callback (``hydra.callbacks.fgssl_sweep`` in ``conf/config.yaml``).
A failed job writes its one-line error to ``error.txt`` in its own folder and the sweep goes on
(:func:`fgssl.lifecycle.run_job`); when the sweep ends this callback reads the sweep folder, prints
how many jobs finished and failed with each failed job's folder and error, and exits with code 1
when any job failed. It reads the folder, not the launcher's in-memory results, so it works the same
whether the jobs ran in this process (Hydra's basic launcher) or elsewhere.

``hydra.callbacks.fgssl_sweep.fail_fast=true`` restores Hydra's stop at the first failing job.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Tuple

from hydra.experimental.callback import Callback

from fgssl.runs import read_jobs


def sweep_status(sweep_dir: Path) -> Tuple[List[Path], List[Tuple[Path, str]]]:
    """(finished job folders, [(failed job folder, its error line)]) of a sweep folder, read by the reader
    ``fgssl.results`` uses (:mod:`fgssl.runs`): a job that wrote ``error.txt`` failed, any other finished."""
    jobs = read_jobs(sweep_dir)
    return ([j.path for j in jobs if j.failure is None],
            [(j.path, j.failure) for j in jobs if j.failure is not None])


class SweepSummary(Callback):
    def __init__(self, fail_fast: bool = False) -> None:
        self.fail_fast = fail_fast

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        finished, failed = sweep_status(sweep_dir)
        total = len(finished) + len(failed)
        print(f"\nsweep {sweep_dir}: {len(finished)} of {total} job(s) finished, {len(failed)} failed",
              file=sys.stderr if failed else sys.stdout, flush=True)
        for job, line in failed:
            print(f"  failed: {job}: {line}", file=sys.stderr, flush=True)
        if failed:
            print(f"  (the table: python -m fgssl.results {sweep_dir})", file=sys.stderr, flush=True)
            sys.exit(1)

"""The life of one training run, around :func:`fgssl.run.train`: what happens when something outside
the training loop goes wrong.

* :class:`RunLock`: one run per run directory (an advisory ``fcntl`` lock that the OS releases when
  the process dies, so a ``kill -9`` leaves no stale lock);
* :class:`GracefulStop`: SIGTERM / SIGINT finish the current step, write ``last.ckpt`` at that step
  and exit with one line and the signal's exit code (the callback is
  :class:`fgssl.callbacks.stop.StopOnSignal`);
* :func:`check_devices`: a device that is not there is one line, before anything is built;
* :func:`run_job`: the entry point's wrapper -- one ``fgssl error:`` line for bad input or a full
  disk, and inside a Hydra multirun an ``error.txt`` in the failed job's folder while the sweep goes
  on (:mod:`fgssl.sweep` prints the summary at the end).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

from fgssl import layout
from fgssl.errors import FgsslError
from fgssl.fsio import DiskFullError, disk_full_error, is_disk_full
from fgssl.layout import RANK_VARS, is_launching_process  # noqa: F401 - re-exported
from fgssl.layout import run_dir as job_dir  # noqa: F401 - the run directory, without importing Lightning
from fgssl.workers import QuietWorkerInit  # noqa: F401 - re-exported (tests, older imports)

LOCK_FILE = layout.LOCK
ERROR_FILE = layout.ERROR


# ====================================================================== one run per folder
class RunLockedError(FgsslError):
    """The run directory is held by another live run."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run dir>/.fgssl.lock`` for as long as the run lives.

    The lock belongs to the open file, so the OS drops it when the process ends in any way (a
    ``kill -9`` included): there is never a stale lock to clean up. The file records the holder's
    host, pid and start time, for the message the second run prints. Only the first process of a
    run takes it (:func:`is_launching_process`); its DDP workers share it. ``flock`` works on local
    disks and on NFSv4 (where Linux maps it to a POSIX lock).
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fh = None

    def acquire(self) -> "RunLock":
        import fcntl

        if not is_launching_process():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "a process that has not written its name yet"
            fh.close()
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by another run ({holder}); wait for it to finish or "
                f"stop it, or give this run another folder (hydra.run.dir=...)") from None
        fh.seek(0)
        fh.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        fh.write(f"host {socket.gethostname()}, pid {os.getpid()}, started {started}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file drops the lock; the file itself stays (harmless)
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ====================================================================== graceful stop
class Stopped(BaseException):
    """Raised to leave the run after a stop signal, once ``last.ckpt`` holds the finished step.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` on the way
    swallows it, and a stop signal ends a Hydra sweep as well."""

    def __init__(self, signum: int, step: Optional[int]):
        super().__init__(signum, step)
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT

    def line(self) -> str:
        at = f" at step {self.step}" if self.step is not None else " before the first training step"
        return f"stopped by {signal.Signals(self.signum).name}{at}; rerun the same command to resume"


class GracefulStop:
    """Installs SIGTERM and SIGINT handlers for the duration of a run.

    The handler only records the signal. During ``trainer.fit`` (``deferred``) the
    :class:`~fgssl.callbacks.stop.StopOnSignal` callback acts on it at the next step boundary, on
    every DDP rank at the same step; outside it (data setup, the final evaluation) the handler
    raises :class:`Stopped` at once, as Python does for Ctrl-C. A second signal while the checkpoint
    is being written is recorded and ignored, so the write always completes (and it is a write to a
    temporary file renamed over ``last.ckpt``: even a ``kill -9`` then leaves the previous one).

    DataLoader worker processes forked from this process inherit the handler; it ignores the
    signal there (the main process stops them), so they end quietly instead of dying with
    ``DataLoader worker ... is killed by signal: Terminated``.

    Lightning's own SIGTERM handling is not used: its handler kills the launcher's child processes
    and runs a ``torch.distributed.broadcast`` from inside the signal handler, which under DDP can
    interleave with the step's gradient all-reduce, and its ``SIGTERMException`` leaves without a
    checkpoint at the stop step; SIGINT is Lightning's ``KeyboardInterrupt`` path, which exits 1
    at any point of the step.
    """

    #: SIGUSR1 / SIGUSR2: SLURM's pre-timeout signal (``#SBATCH --signal=USR1@90``; submitit uses USR2):
    #: the same stop, then the job is requeued (:func:`requeue`)
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
    current: Optional["GracefulStop"] = None

    def __init__(self):
        self.pid = os.getpid()
        self.signum: Optional[int] = None
        self.deferred = False
        self.step: Optional[int] = None  # the last training step that is in last.ckpt (for the message)
        self._previous: Dict[int, Any] = {}

    def handler(self, signum, frame) -> None:
        if os.getpid() != self.pid:
            return  # a forked DataLoader worker: the main process stops it
        first = self.signum is None
        if first:
            self.signum = signum
        if not self.deferred and first:
            raise Stopped(signum, self.step)

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for s in self.SIGNALS:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self.handler)

    def reinstall(self) -> None:
        """Take the signals back (Lightning registers its own SIGTERM handler when ``fit`` starts)."""
        import threading

        if threading.current_thread() is threading.main_thread() and self._previous:
            for s in self.SIGNALS:
                signal.signal(s, self.handler)

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> "GracefulStop":
        self.install()
        GracefulStop.current = self
        return self

    def __exit__(self, *exc) -> None:
        GracefulStop.current = None
        self.uninstall()


# ====================================================================== devices
def check_devices(cfg) -> None:
    """A requested accelerator or device count that this machine does not have: one line naming the
    key and the way out, before anything is built."""
    t = cfg.trainer
    if int(t.num_nodes) < 1:
        raise FgsslError(f"trainer.num_nodes={t.num_nodes} must be >= 1 (the number of machines of one run)")
    acc = str(t.accelerator).lower()
    if acc not in ("gpu", "cuda"):
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have == 0:
        raise FgsslError(f"trainer.accelerator={t.accelerator} but this machine has no CUDA GPU (trainer=gpu, "
                         f"trainer=ddp and experiment=paper_r50 ask for one); run on the CPU with trainer=cpu, or "
                         f"trainer.accelerator=cpu trainer.precision=32-true")
    devices = t.devices
    want = None
    if isinstance(devices, int) or (isinstance(devices, str) and devices.strip().isdigit()):
        want = int(devices)
    elif isinstance(devices, str) and "," in devices:
        want = len([d for d in devices.split(",") if d.strip()])
    elif hasattr(devices, "__len__") and not isinstance(devices, str):
        want = len(devices)
    if want is not None and want > have:
        raise FgsslError(f"trainer.devices={devices} but this machine has {have} CUDA GPU(s); use "
                         f"trainer.devices={have} (or -1 for all), or trainer=cpu")


# ====================================================================== the entry point's wrapper
def _multirun_info():
    """(is this a Hydra multirun job, fail_fast) -- fail_fast from the fgssl_sweep Hydra callback."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ValueError, ImportError):
        return False, False
    if hc.mode != RunMode.MULTIRUN:
        return False, False
    cb = (hc.callbacks or {}).get("fgssl_sweep") if hasattr(hc, "callbacks") else None
    return True, bool(cb.get("fail_fast", False)) if cb else False


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _disk_full_in(e: BaseException) -> Optional[FgsslError]:
    """The disk-full error behind ``e`` (a full disk often fails a second write, e.g. the logger's, while
    the first error is handled): the first :class:`DiskFullError` in its context chain, else one built
    from the ``OSError`` itself."""
    seen, cur = set(), e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, DiskFullError):
            return cur
        seen.add(id(cur))
        cur = cur.__context__
    if is_disk_full(e):
        path = getattr(e, "filename", None) or "a file of the run"
        return disk_full_error(path, None, "the last good checkpoint (checkpoints/last.ckpt) is kept")
    return None


def write_error_file(run_dir: Path, line: str, detail: Optional[str] = None) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).write_text(line + "\n" + (("\n" + detail) if detail else ""))
    except OSError:
        pass  # a full disk: the line is still printed


REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def requeue(stopped: Stopped, previous: Dict[int, Any]) -> Optional[str]:
    """After a stop by SLURM's pre-timeout signal, with ``last.ckpt`` written at the stop step: requeue the
    job, so that it runs the same command again and resumes there. Under submitit the handler it had
    installed for the signal does it (``scontrol requeue`` and its own bookkeeping; it then exits);
    otherwise ``scontrol requeue $SLURM_JOB_ID``, as Lightning's SLURM connector does. Returns what was
    done (for the last line), or None when the job is not a SLURM job. Rank 0 only."""
    if not is_launching_process():
        return None
    prev = previous.get(stopped.signum)
    if callable(prev):  # submitit's checkpoint_and_try_requeue: requeues, then sys.exit
        print(f"{stopped.line().split(';')[0]}; requeueing through submitit (the job resumes from last.ckpt)",
              file=sys.stderr, flush=True)
        prev(stopped.signum, None)
        return "requeued by submitit"
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        return None
    import subprocess

    try:
        rc = subprocess.call(["scontrol", "requeue", job], timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"scontrol requeue {job} failed ({type(e).__name__}: {e}); rerun the same command to resume"
    if rc != 0:
        return f"scontrol requeue {job} failed (exit code {rc}); rerun the same command to resume"
    return f"requeued SLURM job {job}; it resumes from last.ckpt"


def run_job(fn: Callable, cfg, preflight: Optional[Callable] = None):
    """Call ``fn(cfg)`` (``fgssl.run.train``) the way an entry point should.

    * ``preflight(cfg)`` first (the cheap checks, :mod:`fgssl.preflight`), then ``fn`` holding the run
      folder's :class:`RunLock` with :class:`GracefulStop`'s signal handlers installed;
    * :class:`FgsslError` and a full disk: one ``fgssl error: ...`` line on stderr, exit code 2;
    * a stop signal: ``stopped by SIGTERM at step N; rerun the same command to resume``, exit
      code 128 + the signal's number;
    * inside a Hydra multirun, a failed job (bad input, or any other exception, whose traceback is
      printed) writes its one-line error to ``error.txt`` in its own folder and returns ``None``, so
      the sweep goes on; ``hydra.callbacks.fgssl_sweep.fail_fast=true`` stops the sweep there
      instead. A stale ``error.txt`` from an earlier attempt of the job is removed when it starts.
    """
    multirun, fail_fast = _multirun_info()
    out = job_dir(cfg).resolve()
    stop_handlers: Dict[int, Any] = {}
    try:
        if preflight is not None:
            preflight(cfg)
        out.mkdir(parents=True, exist_ok=True)
        with run_lifecycle(out) as stop:
            stop_handlers = stop._previous
            if is_launching_process():
                with contextlib.suppress(OSError):
                    (out / ERROR_FILE).unlink()
            return fn(cfg)
    except Stopped as s:
        requeued = requeue(s, stop_handlers) if s.signum in REQUEUE_SIGNALS else None
        if is_launching_process():
            print(s.line() if requeued is None else s.line().split(";")[0] + f"; {requeued}", file=sys.stderr,
                  flush=True)
        sys.stdout.flush()
        sys.exit(s.exit_code)
    except Exception as e:  # noqa: BLE001 - each kind is handled below or re-raised
        err = e if isinstance(e, FgsslError) else _disk_full_in(e)
        if err is None and not multirun:
            raise
        if err is not None:
            line = f"fgssl error: {err}"
            if is_launching_process():
                print(line, file=sys.stderr, flush=True)
            detail = None
        else:
            line = f"error: {_first_line(e)}"
            detail = traceback.format_exc()
            print(detail, file=sys.stderr, flush=True)
        if multirun and is_launching_process() and not isinstance(err, RunLockedError):
            write_error_file(out, line, detail)
        if multirun and not fail_fast:
            return None
        sys.exit(2)


@contextlib.contextmanager
def run_lifecycle(out: Path) -> Iterator[GracefulStop]:
    """What :func:`fgssl.run.train` holds for the whole run: the folder's lock and the signal handlers."""
    with RunLock(out), GracefulStop() as stop:
        yield stop

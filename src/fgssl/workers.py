"""DataLoader worker processes that leave stopping to their main process.

:class:`QuietWorkerInit` is every fgssl loader's ``worker_init_fn`` (data, eval): the worker ignores
SIGTERM / SIGINT, so a stop signal sent to the whole process group reaches the main process's graceful
stop (:class:`fgssl.lifecycle.GracefulStop`) instead of killing a worker in the middle of a batch. On the
lowest floor (no fgssl import): the data and eval floors use it, and a lower floor never imports the
run's lifecycle.
"""

from __future__ import annotations

import atexit
import os
import signal

_KILL_AT_EXIT = False


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, e.g. a SLURM or
    ``taskset`` share; else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _kill_daemonic_children() -> None:
    """At exit, multiprocessing SIGTERMs its daemonic children (loader workers) and joins them. Our
    workers ignore SIGTERM (:class:`QuietWorkerInit`), so a worker whose loader was never shut down
    (an exception in the middle of an iteration keeps the iterator alive) would block that join
    forever and the process would never exit. SIGKILL them first: what terminate() was meant to do."""
    import multiprocessing

    for p in multiprocessing.active_children():
        if p.daemon:
            p.kill()
            p.join(timeout=10)


class QuietWorkerInit:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGTERM and SIGINT.

    A stop signal sent to the whole process group (``timeout``, SLURM, Ctrl-C) also reaches the
    DataLoader workers. torch's worker sets a SIGTERM handler that kills the worker unless the
    signal came from its parent, and the main process then fails with ``DataLoader worker ... exited
    unexpectedly`` before it can finish the step. The main process decides when to stop
    (:class:`GracefulStop`) and shuts its workers down itself; a worker whose main process dies
    notices and exits on its own (torch's watchdog).

    ``lightning_seed``: also run Lightning's ``pl_worker_init_function`` (what Lightning adds to the
    loaders it runs, after ``seed_everything(workers=True)``, when they have no ``worker_init_fn``).
    """

    def __init__(self, lightning_seed: bool = False):
        self.lightning_seed = lightning_seed
        global _KILL_AT_EXIT
        if not _KILL_AT_EXIT:  # registered after multiprocessing's own exit hook, so it runs before it
            atexit.register(_kill_daemonic_children)
            _KILL_AT_EXIT = True

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.lightning_seed and int(os.environ.get("PL_SEED_WORKERS", "0")):
            from lightning_fabric.utilities.seed import pl_worker_init_function

            pl_worker_init_function(worker_id)

"""Beyond one machine (issue 16): a run under SLURM or ``torchrun`` takes its shape from the environment.

* :func:`cluster_environment`: Lightning's own detection of the cluster the process was started by
  (``TorchElasticEnvironment`` for ``torchrun``, ``SLURMEnvironment`` for ``srun`` / the submitit
  launcher; the same order as Lightning's accelerator connector);
* :func:`apply_cluster_env`: ``trainer.num_nodes``, ``trainer.devices`` (processes per node) and
  ``trainer.strategy`` (``ddp`` when there is more than one process) follow that environment, so that
  ``torchrun --nnodes=2 --nproc-per-node=4 train.py ...`` or a SLURM job with 2 nodes x 4 tasks needs no
  ``trainer.*`` override (Lightning would otherwise stop at its own mismatch check);
* :func:`shared_run_dir`: the run directory every process of a ``torchrun`` run uses (rank 0's);
* :func:`check_launcher_keys`: a ``hydra.launcher.*`` key the chosen submitit launcher does not have
  is one ``fgssl error:`` line (Hydra prints a 4-line error with a hint about an environment variable).

Nothing here schedules or launches processes: SLURM, submitit (through Hydra's launcher plugin) and
torchrun do that. Lightning and torch are imported inside the functions: :mod:`fgssl.preflight` calls
:func:`check_launcher_keys` before anything heavy is imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from fgssl.errors import ConfigError
from fgssl.lifecycle import is_launching_process

#: fgssl's launcher configs (``conf/hydra/launcher/``) and the plugin's own two
LAUNCHERS = ("slurm", "local", "submitit_slurm", "submitit_local", "basic")


def cluster_environment():
    """The Lightning cluster environment this process was started in, or None (a plain process)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():  # first, as in Lightning: torchrun can run inside a SLURM job
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect():  # srun-started tasks (not `srun --job-name=interactive`, Lightning's escape)
        return SLURMEnvironment(auto_requeue=False)  # fgssl.lifecycle handles the pre-timeout signal
    return None


def cluster_plugins() -> list:
    """The Trainer's cluster environment plugin: the detected one, SLURM's without Lightning's auto-requeue
    (its handler would save a separate hpc checkpoint from inside the signal handler, mid-step); none
    outside a cluster environment (Lightning's own DDP launcher then starts the processes)."""
    env = cluster_environment()
    return [env] if env is not None else []


def cluster_shape(env) -> tuple:
    """(nodes, processes per node) of a detected environment, from its world size (Lightning's reading)
    and the one variable of the launcher that Lightning itself checks the config against."""
    world = env.world_size()
    from lightning_fabric.plugins.environments import TorchElasticEnvironment

    if isinstance(env, TorchElasticEnvironment):
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return max(world // per_node, 1), per_node
    nodes = int(os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES", "1")))
    return nodes, max(world // nodes, 1)


def apply_cluster_env(cfg) -> Optional[str]:
    """Set ``trainer.num_nodes``, ``trainer.devices`` and (for more than one process, when it is ``auto``)
    ``trainer.strategy`` from the SLURM / torchrun environment; prints (rank 0) and returns a line saying so, or None
    outside a cluster environment (the config is then left as it is)."""
    env = cluster_environment()
    if env is None:
        return None
    nodes, per_node = cluster_shape(env)
    t = cfg.trainer
    before = (t.num_nodes, t.devices, t.strategy)
    t.num_nodes, t.devices = nodes, per_node
    if nodes * per_node > 1 and str(t.strategy) == "auto":
        t.strategy = "ddp"
    name = "torchrun" if type(env).__name__ == "TorchElasticEnvironment" else "SLURM"
    changed = "" if before == (t.num_nodes, t.devices, t.strategy) else \
        f" (was num_nodes={before[0]}, devices={before[1]}, strategy={before[2]})"
    line = (f"fgssl: {name} environment: {nodes} node(s) x {per_node} process(es); trainer.num_nodes={nodes} "
            f"trainer.devices={per_node} trainer.strategy={t.strategy}{changed}")
    if is_launching_process():
        print(line, flush=True)
    return line


# ---------------------------------------------------------------------- torchrun: one run directory
RUN_DIR_KEY = "fgssl/run_dir"


def shared_run_dir(own: Path) -> Path:
    """Under torchrun, the run directory of global rank 0, for every rank.

    Each rank runs Hydra itself, so each computes its own run directory; that is the same one for the
    default ``hydra.run.dir`` (a function of the command line), but not for a time-stamped one, and the
    run lock, the checkpoints and the resume must be in one place. Rank 0 publishes its directory in
    the key-value store torchrun's rendezvous already runs (``MASTER_ADDR:MASTER_PORT``, the one
    ``init_process_group`` uses), the other ranks read it from there. Outside torchrun: ``own``.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return own
    from datetime import timedelta

    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=300))
        key = f"{RUN_DIR_KEY}/{os.environ['TORCHELASTIC_RUN_ID']}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"
        if rank == 0:
            store.set(key, str(own))
            return own
        return Path(store.get(key).decode())
    except (RuntimeError, OSError) as e:  # no store there (a launcher that only sets the variables)
        print(f"fgssl: rank {rank}: no torchrun store at {os.environ.get('MASTER_ADDR')}:"
              f"{os.environ.get('MASTER_PORT')} ({type(e).__name__}); using this process's run directory {own}",
              file=sys.stderr, flush=True)
        return own


# ---------------------------------------------------------------------- launcher keys
def _launcher_fields(name: str) -> Optional[set]:
    from dataclasses import fields

    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

    conf = {"slurm": SlurmQueueConf, "submitit_slurm": SlurmQueueConf,
            "local": LocalQueueConf, "submitit_local": LocalQueueConf}.get(name)
    return set() if conf is None else {f.name for f in fields(conf) if not f.name.startswith("_")}


def check_launcher_keys(overrides: Sequence[str]) -> None:
    """``hydra/launcher=NAME`` must be one of :data:`LAUNCHERS`, and every ``hydra.launcher.KEY=...``
    a key of that launcher (``partitoin``: one line naming the key, with the closest known key)."""
    import difflib

    chosen, keys = None, []
    for o in overrides:
        key, eq, value = o.partition("=")
        key = key.lstrip("+~")
        if key == "hydra/launcher" and eq:
            chosen = value
        elif key.startswith("hydra.launcher.") and eq:
            keys.append(key)
    if chosen is not None and chosen not in LAUNCHERS:
        raise ConfigError(f"hydra/launcher={chosen} is not a launcher fgssl knows; use one of {', '.join(LAUNCHERS)} "
                          f"(conf/hydra/launcher/, docs/cluster.md)")
    # no hydra/launcher= on the command line (an experiment file chooses it): the SLURM launcher's keys,
    # a superset of the local one's
    known = _launcher_fields(chosen or "slurm")
    for key in keys:
        name = key.split(".")[2]
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean hydra.launcher.{close[0]}? " if close else ""
            raise ConfigError(f"unknown launcher key {key}: hydra/launcher={chosen or 'slurm'} has no key "
                              f"'{name}'; {hint}its keys: {', '.join(sorted(known)) or 'none'}")


"""Where the log of each job of a sweep run through Hydra's submitit launcher is (issue 16).

The launcher (``hydra/launcher=slurm`` or ``local``) runs each job as a submitit job with its own folder
``<sweep>/.submitit/<submitit job id>/`` holding ``<id>_<task>_log.out`` and ``<id>_<task>_log.err``
(task 0 is global rank 0). The plugin records the submitit job id as ``hydra.job.id`` in the job's
``.hydra/hydra.yaml``, which links a job folder to its log. A job that died before Hydra made its
folder (an import error, a node failure, killed in the queue) has a submitit folder that no job folder
points to: :func:`orphan_logs` lists those. Only plain text files are read (no submitit pickle is loaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

SUBMITIT_DIR = ".submitit"


def submitit_jobs(root: Path) -> Dict[str, Path]:
    """{submitit job id: its folder} under ``root/.submitit`` (empty without one)."""
    base = Path(root) / SUBMITIT_DIR
    # "%j": the folder submitit writes into before SLURM (or the local executor) has given a job id
    return {d.name: d for d in sorted(base.iterdir()) if d.is_dir() and "%" not in d.name} if base.is_dir() else {}


def job_id(job_dir: Path) -> Optional[str]:
    """``hydra.job.id`` of a job folder (the submitit job id under the submitit launcher), or None."""
    f = Path(job_dir) / ".hydra" / "hydra.yaml"
    if not f.is_file():
        return None
    try:
        from omegaconf import OmegaConf

        value = OmegaConf.select(OmegaConf.load(f), "hydra.job.id")
    except Exception:  # noqa: BLE001 - an unreadable hydra.yaml: no log to point at
        return None
    return None if value is None else str(value)


def log_file(folder: Path, task: int = 0) -> Path:
    """The stderr log of ``task`` of the submitit job in ``folder`` (stdout's when stderr goes there)."""
    err = folder / f"{folder.name}_{task}_log.err"
    out = folder / f"{folder.name}_{task}_log.out"
    return err if err.is_file() or not out.is_file() else out


def last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def job_log(root: Path, job_dir: Path) -> Optional[Path]:
    """The submitit log of the job in ``job_dir``, or None (not a submitit sweep, or no log)."""
    jid = job_id(job_dir)
    folder = submitit_jobs(root).get(jid) if jid else None
    return log_file(folder) if folder is not None else None


def orphan_logs(root: Path, job_dirs: Sequence[Path]) -> List[Tuple[str, Path, str]]:
    """(submitit job id, its log, the log's last line) for every submitit job of ``root`` that no job
    folder points to: jobs that ended (or are still queued) before Hydra made their folder."""
    claimed = {job_id(d) for d in job_dirs}
    return [(jid, log_file(folder), last_line(log_file(folder)))
            for jid, folder in submitit_jobs(root).items() if jid not in claimed]


def orphan_lines(root: Path, job_dirs: Sequence[Path]) -> List[str]:
    """The markdown lines of :func:`orphan_logs` for ``fgssl.results`` (none when there is none)."""
    orphans = orphan_logs(root, job_dirs)
    if not orphans:
        return []
    return ["", "Submitit jobs without a job directory (ended or still queued before Hydra made it):", ""] + [
        f"- submitit job {jid}: log `{log.relative_to(root)}`" + (f": {last}" if last else " (no log yet)")
        for jid, log, last in orphans]

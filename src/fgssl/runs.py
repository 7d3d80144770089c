"""Reading a folder of runs (a Hydra multirun directory, a sweep, the evidence records): the one reader
that ``fgssl.results`` (tables), ``fgssl.plots`` (the alpha sweep), ``fgssl.evidence`` and the end-of-sweep
summary (``fgssl.sweep``) share.

A *job* is a directory under the root that holds ``.hydra/overrides.yaml`` or ``metrics.json`` (the
outermost such folder: a job's own ``wandb/`` or ``csv/`` is not a job). :func:`read_job` reads its
overrides, its resolved config (``checkpoints/config.yaml``), its seed, its numeric metrics and, when it
has none, why (its ``error.txt``, a missing or unreadable ``metrics.json``). File names: :mod:`fgssl.layout`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from fgssl import layout
from fgssl.layout import RunLayout


@dataclass
class Job:
    path: Path
    overrides: List[str]
    seed: Optional[Any] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None
    #: the first line of the job's ``error.txt`` (a job that failed inside a sweep); None when it has none
    failure: Optional[str] = None
    #: the run's resolved config (``checkpoints/config.yaml``) as plain containers; None when it has none
    config: Optional[Dict[str, Any]] = None


def override_key(o: str) -> str:
    """``+a.b=1`` / ``++a.b=1`` / ``~a.b`` -> ``a.b``."""
    k = o.split("=", 1)[0]
    return k.lstrip("+~")


def read_yaml(path: Path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _read_config(path: Path) -> Optional[Dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        cfg = read_yaml(path)
    except Exception:  # noqa: BLE001 - an unreadable config: the job is read without it
        return None
    return cfg if isinstance(cfg, dict) else None


def _read_seed(run: RunLayout, config: Optional[Dict[str, Any]], overrides: List[str]) -> Optional[Any]:
    for cfg in (config, _read_config(run.hydra_config)):
        if cfg is not None and "seed" in cfg:
            return cfg["seed"]
    for o in overrides:
        if override_key(o) == "seed" and "=" in o:
            return o.split("=", 1)[1]
    return None


def read_metrics(path: Path) -> Dict[str, float]:
    """The numeric entries of a ``metrics*.json`` (a ValueError when it holds none)."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} does not hold a JSON object")
    out = {}
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # run_dir, ckpt paths, ...
        out[k] = float(v)
    if not out:
        raise ValueError(f"{path.name} holds no numeric metric")
    return out


def find_job_dirs(root: Path) -> List[Path]:
    """Directories under ``root`` that are Hydra jobs (``.hydra/overrides.yaml``) or hold ``metrics.json``."""
    found = set()
    for p in root.rglob(Path(layout.HYDRA_OVERRIDES).name):
        if p.parent.name == Path(layout.HYDRA_OVERRIDES).parent.name:
            found.add(p.parent.parent)
    for p in root.rglob(layout.METRICS):
        found.add(p.parent)
    # A job's own sub-folders (wandb, csv, ...) are not jobs; keep the outermost dirs.
    dirs = sorted(found, key=lambda d: (len(d.parts), str(d)))
    keep: List[Path] = []
    for d in dirs:
        if not any(k in d.parents for k in keep):
            keep.append(d)
    return sorted(keep, key=_job_sort_key)


def _job_sort_key(d: Path):
    head = d.name.split("_", 1)[0]
    return (0, int(head), str(d)) if head.isdigit() else (1, 0, str(d))


def read_job(d: Path) -> Job:
    run = RunLayout(d)
    overrides: List[str] = []
    err = None
    if run.hydra_overrides.is_file():
        try:
            raw = read_yaml(run.hydra_overrides) or []
            overrides = [str(o) for o in raw]
        except Exception as e:  # noqa: BLE001
            err = f"unreadable {layout.HYDRA_OVERRIDES} ({type(e).__name__})"
    config = _read_config(run.config)
    job = Job(d, overrides, _read_seed(run, config, overrides), error=err, config=config)
    if run.error.is_file():  # written by a failed job of a sweep (fgssl.lifecycle.run_job)
        job.failure = (run.error.read_text(errors="replace").strip().splitlines() or ["failed"])[0]
        job.error = f"failed: {job.failure} (see {run.error.name})"
        return job
    if not run.metrics.is_file():
        job.error = job.error or f"no {layout.METRICS} (failed, killed or still running)"
        return job
    try:
        job.metrics = read_metrics(run.metrics)
    except Exception as e:  # noqa: BLE001
        job.error = f"unreadable {layout.METRICS} ({type(e).__name__}: {e})"
    return job


def read_jobs(root: Path) -> List[Job]:
    """Every job under ``root``, in sweep order (``0_...``, ``1_...``, then by name)."""
    return [read_job(d) for d in find_job_dirs(root)]


def with_evals(jobs: Sequence[Job], evals: Sequence[str]) -> List[Job]:
    """``jobs`` plus, for each job and each name in ``evals`` whose ``metrics_eval_<name>.json`` it holds, a job
    of that evaluation's metrics with the extra override ``eval=<name>`` (same folder, seed and config)."""
    out = list(jobs)
    for name in evals:
        for j in jobs:
            f = j.path / f"{layout.EVAL_METRICS_PREFIX}{name}.json"
            if j.error is None and f.is_file():
                try:
                    out.append(Job(j.path, [*j.overrides, f"eval={name}"], j.seed, read_metrics(f), config=j.config))
                except Exception as e:  # noqa: BLE001 - unreadable: listed with the failed jobs, not dropped silently
                    out.append(Job(j.path, [*j.overrides, f"eval={name}"], j.seed, error=f"{f.name}: {e}"))
    return out

"""``python -m fgssl.evidence collect SRC DST``: copy the small outputs of finished jobs for committing.

An evidence sweep takes hours and spans sessions; what is worth keeping in git is each finished
job's record, never its checkpoints. For every job folder under SRC that holds a ``metrics.json``
(a finished run) and every floor file, the files below are copied to the same relative path under
DST: ``metrics*.json``, ``curve.json``, ``checkpoints/config.yaml`` (the resolved config),
``.hydra/overrides.yaml`` and ``csv/metrics.csv``. Unfinished jobs are listed, not copied.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from fgssl.results import FLOOR_FILES, find_job_dirs

KEEP = ("metrics.json", "curve.json", "checkpoints/config.yaml", ".hydra/overrides.yaml", "csv/metrics.csv")


def collect(src: Path, dst: Path) -> List[Path]:
    """Copy the finished jobs' records; returns the unfinished job folders."""
    unfinished = []
    for job in find_job_dirs(src):
        if not (job / "metrics.json").is_file():
            unfinished.append(job)
            continue
        for rel in KEEP:
            f = job / rel
            if f.is_file():
                target = dst / job.relative_to(src) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
    for name in FLOOR_FILES:
        for f in src.rglob(name):
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    return unfinished


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fgssl.evidence", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="copy finished jobs' metrics, curves and configs from SRC to DST")
    c.add_argument("src")
    c.add_argument("dst")
    a = p.parse_args(argv)
    src = Path(a.src)
    if not src.is_dir():
        print(f"fgssl error: {src} is not a directory", file=sys.stderr)
        return 2
    unfinished = collect(src, Path(a.dst))
    for j in unfinished:
        print(f"not finished (rerun its command to resume): {j}")
    print(f"collected into {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m fgssl.trainlog DIR [DIR ...]``: what the training logs say, as tables of epoch means.

The diagnosis of a run (is the decoder still learning? does the LCR branch fit its target? how far does
SYN's perturbation move z?) lives in its ``csv/metrics.csv`` (``logger=csv``; the evidence sweep records
it), one row per logged step. This tool averages a run's logged values per epoch and then over blocks of
epochs (each epoch counts once, however many steps it logged), and prints Markdown tables:

- ``--every N`` (default 5): one table per run, a row per block of N epochs (``0–4``, ``5–9``, ...);
- ``--epochs A-B``: one table for all runs, a row per run, the means over epochs A to B.

``--keys`` picks the columns (default: every ``train/*`` key the runs logged); ``--only TEXT`` keeps the
runs whose path contains TEXT. Bad input is one ``fgssl error:`` line naming the folder or key.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fgssl import layout
from fgssl.runs import find_job_dirs

#: per run: key -> epoch -> the epoch's mean
EpochMeans = Dict[str, Dict[int, float]]


class TrainLogError(ValueError):
    """Bad input to the tool: printed as one ``fgssl error:`` line."""


def read_log(path: Path) -> EpochMeans:
    """The mean of each logged key per epoch from one Lightning ``metrics.csv`` (empty cells skipped)."""
    values: Dict[str, Dict[int, List[float]]] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    epoch = int(float(row.get("epoch") or ""))
                except ValueError:
                    continue  # a row without an epoch (Lightning writes none such for train/* keys)
                for k, v in row.items():
                    if k in (None, "epoch", "step") or v in (None, ""):
                        continue
                    try:
                        x = float(v)
                    except ValueError:
                        continue
                    if math.isfinite(x):
                        values.setdefault(k, {}).setdefault(epoch, []).append(x)
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise TrainLogError(f"{path}: unreadable training log ({type(e).__name__}: {e})") from e
    return {k: {e: statistics.fmean(xs) for e, xs in by_epoch.items()} for k, by_epoch in values.items()}


def block_mean(means: Dict[int, float], first: int, last: int) -> Optional[float]:
    """The mean over epochs ``first..last`` (inclusive) of the epochs that logged the key; None if none did."""
    xs = [v for e, v in means.items() if first <= e <= last]
    return statistics.fmean(xs) if xs else None


def find_logs(dirs: Sequence[Path], only: Optional[str] = None) -> List[Tuple[str, EpochMeans]]:
    """(run label, its epoch means) for every run under ``dirs`` that holds ``csv/metrics.csv``."""
    runs: List[Tuple[str, EpochMeans]] = []
    for d in dirs:
        if not d.is_dir():
            raise TrainLogError(f"{d} is not a directory")
        for job in find_job_dirs(d) or [d]:
            log = layout.RunLayout(job).csv_log
            label = str(job.relative_to(d)) if job != d else d.name
            if log.is_file() and (only is None or only in str(job)):
                runs.append((label, read_log(log)))
    if not runs:
        what = f" whose path contains {only!r}" if only else ""
        raise TrainLogError(f"no training log ({layout.CSV_LOG}, logger=csv) under "
                            f"{', '.join(map(str, dirs))}{what}")
    return runs


def _keys(runs: Sequence[Tuple[str, EpochMeans]], keys: Optional[Sequence[str]]) -> List[str]:
    logged = sorted({k for _, m in runs for k in m})
    if not keys:
        return [k for k in logged if k.startswith("train/")] or logged
    missing = [k for k in keys if k not in logged]
    if missing:
        raise TrainLogError(f"--keys {','.join(missing)}: not in the training logs; logged keys: {', '.join(logged)}")
    return list(keys)


def _cell(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3f}"


def block_table(label: str, means: EpochMeans, keys: Sequence[str], every: int) -> str:
    """One run's table: a row per block of ``every`` epochs, a column per key."""
    epochs = sorted({e for k in keys for e in means.get(k, {})})
    lines = [f"{label}\n", "| epochs | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for first in range(epochs[0] - epochs[0] % every, epochs[-1] + 1, every) if epochs else []:
        last = first + every - 1
        cells = [_cell(block_mean(means.get(k, {}), first, last)) for k in keys]
        lines.append(f"| {first}–{min(last, epochs[-1])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(runs: Sequence[Tuple[str, EpochMeans]], keys: Sequence[str], first: int, last: int) -> str:
    """A row per run, a column per key: the means over epochs ``first..last``."""
    lines = [f"means over epochs {first}–{last}\n", "| run | " + " | ".join(keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for label, means in runs:
        lines.append(f"| {label} | " + " | ".join(_cell(block_mean(means.get(k, {}), first, last)) for k in keys)
                     + " |")
    return "\n".join(lines)


def _epoch_range(text: str) -> Tuple[int, int]:
    try:
        a, _, b = text.partition("-")
        first, last = int(a), int(b or a)
    except ValueError:
        raise TrainLogError(f"--epochs {text!r} must be A-B (e.g. 25-29) or one epoch") from None
    if first < 0 or last < first:
        raise TrainLogError(f"--epochs {text!r}: need 0 <= A <= B")
    return first, last


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fgssl.trainlog", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="run or sweep directories holding csv/metrics.csv")
    p.add_argument("--keys", default=None, help="comma-separated logged keys (default: every train/* key)")
    p.add_argument("--every", type=int, default=5, help="epochs per block of the per-run tables (default 5)")
    p.add_argument("--epochs", default=None, help="A-B: one table of the runs' means over epochs A to B instead")
    p.add_argument("--only", default=None, help="only the runs whose path contains this text (e.g. seed_0)")
    a = p.parse_args(argv)
    try:
        if a.every < 1:
            raise TrainLogError(f"--every {a.every} must be >= 1")
        runs = find_logs([Path(d) for d in a.dirs], a.only)
        keys = _keys(runs, [k for k in (a.keys or "").split(",") if k])
        if a.epochs is not None:
            print(runs_table(runs, keys, *_epoch_range(a.epochs)))
        else:
            # default keys: each run's table shows the train/* keys that run logged (a SYN run has no L_fit)
            print("\n\n".join(block_table(label, m, keys if a.keys else [k for k in keys if k in m], a.every)
                              for label, m in runs))
    except TrainLogError as e:
        print(f"fgssl error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m fgssl.curves DIR [DIR ...]``: learning curves against the floors.

Every ``curve.json`` under the given directories (written by ``eval.every_n_epochs``, see
``fgssl/callbacks/curve.py``) becomes one line per metric: retrieval mAP, rank-1, rank-5, linear
top-1 and kNN top-1 against epochs. The floors found under the same directories
(``metrics_eval_colorhist*.json``, ``metrics_eval_random*.json``, from ``evaluate.py ckpt=colorhist`` /
``ckpt=random``) are drawn as horizontal lines. Writes one PNG (``--out``, default
``<first DIR>/curves.png``).

A sweep of several seeds per configuration (the evidence sweep: 7 rows x 3 seeds) is unreadable as one
line per run: ``--group-seeds`` draws one line per configuration (the runs whose labels differ only in
``seed``), the mean over its seeds, with a band of +-1 standard deviation; ``--only TEXT`` keeps the runs
whose label contains TEXT (e.g. ``seed_0``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fgssl.callbacks.curve import CURVE_FILE, read_curve
from fgssl.results import find_floors

PANELS = (("test/retrieval_map", "retrieval mAP"), ("test/retrieval_rank1", "retrieval rank-1"),
          ("test/retrieval_rank5", "retrieval rank-5"), ("test/linear_top1", "linear top-1"),
          ("test/knn_top1", "kNN top-1"))


def collect(dirs: Sequence[Path]) -> Tuple[Dict[str, List[dict]], Dict[str, Dict[str, float]]]:
    """(run label -> curve points, floor label -> metrics) from everything under ``dirs``."""
    curves: Dict[str, List[dict]] = {}
    floors: Dict[str, Dict[str, float]] = {}
    for d in dirs:
        for f in sorted(d.rglob(CURVE_FILE)):
            points = read_curve(f)
            if points:
                label = str(f.parent.relative_to(d)) if f.parent != d else d.name
                curves[label if label != "." else d.name] = points
        for g in find_floors(d):  # the floor reader of fgssl.results: first file of each floor
            floors.setdefault(g.key[0], g.jobs[0].metrics)
    return curves, floors


#: ``..._seed_3`` (fgssl's run folder names) or ``seed=3`` (Hydra's) in a run's label.
_SEED = re.compile(r"([_,/]?)seed[_=]\d+")


def group_seeds(curves: Dict[str, List[dict]]) -> Dict[str, List[dict]]:
    """One curve per configuration: runs whose labels differ only in the seed are averaged epoch by epoch
    (over the epochs every seed has); each point carries ``<metric>/std`` (sample std, 0 for one seed) and
    the label says how many seeds it pools."""
    groups: Dict[str, List[List[dict]]] = {}
    for label, points in curves.items():
        groups.setdefault(_SEED.sub("", label) or label, []).append(points)
    out: Dict[str, List[dict]] = {}
    for label, runs in groups.items():
        epochs = sorted(set.intersection(*({p["epoch"] for p in pts} for pts in runs)))
        merged = []
        for e in epochs:
            at = [next(p for p in pts if p["epoch"] == e) for pts in runs]
            point: Dict[str, float] = {"epoch": e}
            for key, _ in PANELS:
                vals = [p[key] for p in at if key in p]
                if len(vals) == len(at):
                    point[key] = statistics.fmean(vals)
                    point[f"{key}/std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            merged.append(point)
        out[f"{label} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"] = merged
    return out


def plot(curves: Dict[str, List[dict]], floors: Dict[str, Dict[str, float]], out: Path,
         title: Optional[str] = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.6))
    for ax, (key, name) in zip(axes, PANELS):
        for label, points in curves.items():
            pts = [(p["epoch"], p[key]) for p in points if key in p]
            if pts:
                (line,) = ax.plot(*zip(*pts), marker="o", ms=3, label=label)
                band = [(p["epoch"], p[key], p[f"{key}/std"]) for p in points if p.get(f"{key}/std")]
                if band:
                    e, m, sd = zip(*band)
                    ax.fill_between(e, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                                    color=line.get_color(), alpha=0.15, lw=0)
        for (label, m), style in zip(floors.items(), ("--", ":")):
            if key in m:
                ax.axhline(m[key], color="k", ls=style, lw=1, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(labels) // 4), 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fgssl.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="run or sweep directories holding curve.json files")
    p.add_argument("--out", default=None, help="PNG to write (default: <first dir>/curves.png)")
    p.add_argument("--title", default=None)
    p.add_argument("--group-seeds", action="store_true",
                   help="one line per configuration: the mean over its seeds, with a +-1 std band")
    p.add_argument("--only", default=None, help="only the runs whose label contains this text (e.g. seed_0)")
    a = p.parse_args(argv)
    dirs = [Path(d).expanduser() for d in a.dirs]
    for d in dirs:
        if not d.is_dir():
            print(f"fgssl error: {d} is not a directory", file=sys.stderr)
            return 2
    curves, floors = collect(dirs)
    if a.only is not None and curves:
        labels = sorted(curves)
        curves = {k: v for k, v in curves.items() if a.only in k}
        if not curves:
            print(f"fgssl error: --only {a.only!r} matches none of the {len(labels)} runs ({', '.join(labels[:3])}"
                  f"{', ...' if len(labels) > 3 else ''})", file=sys.stderr)
            return 2
    if not curves:
        print(f"fgssl error: no {CURVE_FILE} under {', '.join(map(str, dirs))} (train with eval.every_n_epochs=N)",
              file=sys.stderr)
        return 2
    if a.group_seeds:
        curves = group_seeds(curves)
    out = plot(curves, floors, Path(a.out) if a.out else dirs[0] / "curves.png", a.title)
    print(f"{len(curves)} curve(s), {len(floors)} floor(s): {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

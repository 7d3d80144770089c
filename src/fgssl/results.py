"""``python -m fgssl.results DIR``: a Hydra multirun directory as a results table.

Every job directory under DIR (one holding ``.hydra/overrides.yaml`` or
``metrics.json``) is read: its overrides (``.hydra/overrides.yaml``), its seed
(``checkpoints/config.yaml``, else ``.hydra/config.yaml``, else the ``seed=``
override) and its ``metrics.json``. Jobs whose overrides are equal once
``seed`` (and any ``--ignore`` key) is removed form one *configuration*; each
numeric metric is reported as mean ± sample standard deviation (ddof=1) over
the configuration's jobs, one row per configuration.

The rows are labelled by the overrides that differ between configurations;
the overrides shared by all jobs are printed above the table. Jobs without a
readable ``metrics.json`` (failed, killed, still running) are listed below it
(a job that failed inside a sweep with its error, from its ``error.txt``)
and left out of the statistics, and when DIR holds Hydra's ``multirun.yaml``,
sweep points that have no job directory at all are listed as well.

``--evals NAME`` adds, for every job that has it, the later evaluation ``metrics_eval_NAME.json``
(``evaluate.py`` on the job's checkpoint, e.g. ``eval.feature=gap`` -> ``last_feature-gap``) as a row of
its own, labelled ``eval=NAME`` and paired by seed like any other configuration.

Writes ``DIR/results.md`` (the printed markdown) and ``DIR/results.csv`` (one
row per configuration: one column per varying override, ``n``, ``seeds``, then
``<metric>_mean`` and ``<metric>_std`` for every metric).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import itertools
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

# the one reader of run folders (also used by figures and evidence); these names stay importable from here
from fgssl.runs import Job, find_job_dirs, override_key, read_job, read_jobs, read_metrics, read_yaml, with_evals  # noqa: F401

#: The headline metrics, shown first and in this order.
HEADLINE = ("test/retrieval_rank1", "test/retrieval_rank5", "test/retrieval_map", "test/linear_top1",
            "test/knn_top1")
#: Bookkeeping numbers of metrics.json, shown last.
TRAILING = ("epochs", "steps", "global_step")
DEFAULT_IGNORE = ("seed",)


@dataclass
class Group:
    key: Tuple[str, ...]
    jobs: List[Job]

    @property
    def seeds(self) -> List[Any]:
        return [j.seed for j in self.jobs]


# ====================================================================== grouping
def config_key(overrides: Sequence[str], ignore: Sequence[str]) -> Tuple[str, ...]:
    return tuple(sorted(o for o in overrides if override_key(o) not in set(ignore)))


def group_jobs(jobs: Sequence[Job], ignore: Sequence[str] = DEFAULT_IGNORE) -> List[Group]:
    """Jobs with metrics, grouped by their overrides minus ``ignore`` (first-seen order)."""
    groups: Dict[Tuple[str, ...], Group] = {}
    for j in jobs:
        if j.error is None:
            k = config_key(j.overrides, ignore)
            groups.setdefault(k, Group(k, [])).jobs.append(j)
    return list(groups.values())


def expected_sweep(root: Path) -> Optional[List[List[str]]]:
    """The override lists of every job of the sweep in ``root/multirun.yaml`` (basic sweeper), or None."""
    f = root / "multirun.yaml"
    if not f.is_file():
        return None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        cfg = read_yaml(f)
        hyd = cfg.get("hydra", {}) if isinstance(cfg, dict) else {}
        task = list((hyd.get("overrides") or {}).get("task") or [])
        params = (hyd.get("sweeper") or {}).get("params") or {}
        task += [f"{k}={v}" for k, v in params.items()]
        parsed = OverridesParser.create().parse_overrides(task)
        axes = []
        for o in parsed:  # as hydra's BasicSweeper builds each job's overrides
            key = o.get_key_element()
            if o.is_sweep_override():
                axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            else:
                axes.append([f"{key}={o.get_value_element_as_str()}"])
        return [list(c) for c in itertools.product(*axes)]
    except Exception:  # noqa: BLE001 - a sweeper we cannot expand: no missing-job check
        return None


def canonical(overrides: Sequence[str]) -> Tuple[str, ...]:
    """Overrides in a normal form (``x=False`` and ``x=false`` compare equal), sorted."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(overrides))
        return tuple(sorted(f"{o.get_key_element()}={o.get_value_element_as_str()}" if o.value() is not None
                            else o.input_line for o in parsed))
    except Exception:  # noqa: BLE001
        return tuple(sorted(overrides))


# ====================================================================== statistics
def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def metric_names(groups: Sequence[Group], patterns: Optional[Sequence[str]] = None) -> List[str]:
    names = {k for g in groups for j in g.jobs for k in j.metrics}
    if patterns:
        names = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    head = [k for k in HEADLINE if k in names]
    tail = [k for k in TRAILING if k in names]
    rest = sorted(names - set(head) - set(tail), key=lambda k: ("/" not in k, k))
    return head + rest + tail


def varying_keys(groups: Sequence[Group]) -> Tuple[List[str], List[str]]:
    """(override keys whose value differs between configurations, overrides shared by all)."""
    if not groups:
        return [], []
    per = [dict((override_key(o), o) for o in g.key) for g in groups]
    keys: List[str] = []
    for d in per:
        keys += [k for k in d if k not in keys]
    varying = [k for k in keys if len({d.get(k) for d in per}) > 1]
    common = [per[0][k] for k in keys if k not in varying]
    return varying, common


def _label(group: Group, varying: Sequence[str]) -> str:
    if len(group.key) == 1 and group.key[0] in FLOOR_FILES.values():
        return group.key[0]
    d = dict((override_key(o), o) for o in group.key)
    parts = [d[k] for k in varying if k in d]
    return ", ".join(parts) if parts else ("(no overrides)" if not group.key else "(all jobs)")


def _value(group: Group, key: str) -> str:
    for o in group.key:
        if override_key(o) == key:
            return o.split("=", 1)[1] if "=" in o else o
    return ""


#: The non-learned baselines ``evaluate.py ckpt=<floor>`` writes, with their row labels.
#: (file-name patterns: ``evaluate.py`` names a file by the evaluation, ``metrics_eval_<ckpt>[_<key>-<value>...].json``)
FLOOR_FILES = {"metrics_eval_colorhist*.json": "floor: colour histogram (ckpt=colorhist)",
               "metrics_eval_random*.json": "floor: untrained network (ckpt=random)"}


def find_floors(root: Path) -> List[Group]:
    """One pseudo-group per floor file name found under ``root`` (several files of a name: one job each)."""
    out = []
    for name, label in FLOOR_FILES.items():
        jobs = []
        for f in sorted(root.rglob(name)):
            try:
                jobs.append(Job(f.parent, [], None, read_metrics(f)))
            except Exception:  # noqa: BLE001 - an unreadable floor is left out, like a failed job
                continue
        if jobs:
            out.append(Group((label,), jobs))
    return out


def t_interval(diffs: Sequence[float], level: float = 0.95) -> Tuple[float, Optional[float], Optional[float]]:
    """Mean of paired differences and its two-sided ``level`` interval (Student t, n-1 dof)."""
    m = statistics.fmean(diffs)
    if len(diffs) < 2:
        return m, None, None
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m, m - half, m + half


def find_baseline(groups: Sequence[Group], spec: str) -> Group:
    """The configuration whose overrides include every ``key=value`` of ``spec`` (comma or space separated)."""
    want = [w for w in spec.replace(",", " ").split() if w]
    hits = [g for g in groups if all(any(canonical([o]) == canonical([w]) for o in g.key) for w in want)]
    if len(hits) != 1:
        names = "; ".join(" ".join(g.key) or "(no overrides)" for g in groups)
        raise ValueError(f"--baseline {spec!r} matches {len(hits)} configurations (need exactly one); "
                         f"configurations: {names}")
    return hits[0]


def paired_rows(groups: Sequence[Group], base: Group, names: Sequence[str], varying: Sequence[str],
                digits: int) -> List[str]:
    """Markdown rows: per configuration and metric, the mean paired difference (same seed) to ``base``
    with its 95 % t interval over seeds."""
    by_seed = {str(j.seed): j for j in base.jobs}
    rows = []
    for g in groups:
        if g is base:
            continue
        cells = [_label(g, varying)]
        pairs = [(j, by_seed[str(j.seed)]) for j in g.jobs if str(j.seed) in by_seed]
        cells.append(str(len(pairs)))
        for name in names:
            d = [a.metrics[name] - b.metrics[name] for a, b in pairs if name in a.metrics and name in b.metrics]
            if not d:
                cells.append("–")
                continue
            m, lo, hi = t_interval(d)
            cells.append(f"{m:+.{digits}f}" + (f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if lo is not None else ""))
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def missing_lines(root: Path, jobs: Sequence[Job], failed: Sequence[Job], missing: Sequence[str]) -> List[str]:
    """The "Missing or failed jobs" section: each failed job (with its submitit log under hydra/launcher=slurm
    or local), each sweep point without a job folder, each submitit job that never made one."""
    from fgssl.submitit_logs import job_log, orphan_lines

    orphans = orphan_lines(root, [j.path for j in jobs])
    if not (failed or missing or orphans):
        return []
    md = ["", f"## Missing or failed jobs ({len(failed) + len(missing)})", ""]
    for j in failed:
        rel = j.path.relative_to(root) if j.path != root else Path(".")
        ov = " ".join(j.overrides)
        log = job_log(root, j.path)
        md.append(f"- `{rel}`" + (f" (`{ov}`)" if ov else "") + f": {j.error}" +
                  (f"; log `{log.relative_to(root)}`" if log else ""))
    md += [f"- `{ov}`: no job directory" for ov in missing]
    return md + orphans


# ====================================================================== output
def _num(x: float, digits: int) -> str:
    """``x`` to ``digits`` decimals, or to 2 significant digits when that would print a non-zero value as 0
    (e.g. the probe's weight decay 1e-05)."""
    return f"{x:.2g}" if 0 < abs(x) < 0.5 * 10 ** -digits else f"{x:.{digits}f}"


def _table(groups: Sequence[Group], floors: Sequence[Group], names: Sequence[str], varying: Sequence[str],
           digits: int) -> Tuple[List[str], List[Dict[str, Any]]]:
    """The main table: markdown lines and csv rows, floors first, one row per configuration."""
    md: List[str] = []
    csv_rows: List[Dict[str, Any]] = []
    header = ["configuration", "n", "seeds", *names]
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "|".join(["---"] * 3 + ["---:"] * len(names)) + "|")
    for g in [*floors, *groups]:
        cells = [_label(g, varying), str(len(g.jobs)), ",".join(str(s) for s in g.seeds if s is not None) or "–"]
        row: Dict[str, Any] = {"configuration": _label(g, varying)}
        for k in varying:
            row[k] = _value(g, k)
        row.update({"n": len(g.jobs), "seeds": " ".join(str(s) for s in g.seeds)})
        for name in names:
            vals = [j.metrics[name] for j in g.jobs if name in j.metrics]
            m, s = mean_std(vals)
            row[f"{name}_mean"], row[f"{name}_std"] = m, s
            if m is None:
                cells.append("–")
                continue
            txt = _num(m, digits) + (f" ± {_num(s, digits)}" if s is not None else "")
            if len(vals) != len(g.jobs):
                txt += f" (n={len(vals)})"
            cells.append(txt)
        md.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        csv_rows.append(row)
    return md, csv_rows


def _missing_jobs(root: Path, jobs: Sequence[Job]) -> List[str]:
    """The sweep points of ``root/multirun.yaml`` that have no job directory."""
    expected = expected_sweep(root)
    if expected is None:
        return []
    seen = {canonical(j.overrides) for j in jobs}
    return [" ".join(ov) or "(no overrides)" for ov in expected if canonical(ov) not in seen]


def build_tables(root: Path, ignore: Sequence[str] = DEFAULT_IGNORE, patterns: Optional[Sequence[str]] = None,
                 digits: int = 2, baseline: Optional[str] = None,
                 floor_dirs: Sequence[Path] = (), evals: Sequence[str] = ()) -> Dict[str, Any]:
    """Read ``root`` and return ``{"markdown", "csv_rows", "groups", "failed", "missing", "metrics"}``.

    Floor rows (``metrics_eval_colorhist*.json``, ``metrics_eval_random*.json`` anywhere under ``root`` or
    ``floor_dirs``) come first; with ``baseline`` (``key=value`` overrides naming one configuration)
    a second table gives every other configuration's mean paired difference to it, seed by seed, with
    a 95 % t interval."""
    jobs = with_evals(read_jobs(root), evals)
    failed = [j for j in jobs if j.error is not None]
    groups = group_jobs(jobs, ignore)
    floors = find_floors(root)
    for d in floor_dirs:  # floors kept beside the sweep (e.g. shared by several sweeps)
        floors += [f for f in find_floors(d) if f.key not in {g.key for g in floors}]
    base = find_baseline(groups, baseline) if baseline else None
    names = metric_names(groups, patterns)
    varying, common = varying_keys(groups)
    missing = _missing_jobs(root, jobs)

    md: List[str] = [f"# Results: {root}", ""]
    ok = sum(len(g.jobs) for g in groups)
    md.append(f"{ok} job(s) with metrics in {len(groups)} configuration(s); mean ± std over seeds "
              f"(sample std, n-1); grouped by overrides without {', '.join(ignore)}.")
    if common:
        md.append(f"Common overrides: `{' '.join(common)}`")
    md.append("")
    csv_rows: List[Dict[str, Any]] = []
    if groups:
        table, csv_rows = _table(groups, floors, names, varying, digits)
        md += table
    else:
        md.append("No job with a readable metrics.json.")
    if base is not None and len(groups) > 1:
        head = [k for k in names if k in HEADLINE] or names
        md += ["", f"## Paired differences vs `{_label(base, varying)}`", "",
               "Mean over seeds of (configuration − baseline) for the same seed, with its 95 % interval "
               "(Student t, n−1 degrees of freedom).", "",
               "| configuration | pairs | " + " | ".join(head) + " |",
               "|" + "|".join(["---"] * 2 + ["---:"] * len(head)) + "|"]
        md += paired_rows(groups, base, head, varying, digits)
    md += missing_lines(root, jobs, failed, missing)
    return {"markdown": "\n".join(md) + "\n", "csv_rows": csv_rows, "groups": groups, "failed": failed,
            "missing": missing, "metrics": names, "varying": varying}


def write_csv(rows: List[Dict[str, Any]], path: Path, varying: Sequence[str], names: Sequence[str]) -> None:
    cols = ["configuration", *varying, "n", "seeds"] + [f"{n}_{s}" for n in names for s in ("mean", "std")]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fgssl.results", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="a Hydra multirun directory (e.g. multirun/2025-01-01/12-00-00)")
    p.add_argument("--ignore", action="append", default=[], metavar="KEY",
                   help="also drop this override key when grouping (repeatable; seed is always dropped)")
    p.add_argument("--metrics", action="append", default=None, metavar="GLOB",
                   help="only the metrics matching this pattern (repeatable), e.g. 'test/retrieval_*'")
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only; do not write results.md/.csv")
    p.add_argument("--floors", action="append", default=[], metavar="DIR",
                   help="also read floor files (metrics_eval_colorhist*.json, metrics_eval_random*.json) under DIR")
    p.add_argument("--baseline", default=None, metavar="KEY=VALUE[,...]",
                   help="the configuration to compare every other one against, seed by seed (paired "
                        "differences with 95%% t intervals), e.g. 'synthesis=none,rationale=none'")
    p.add_argument("--evals", action="append", default=[], metavar="NAME",
                   help="also a row per later evaluation metrics_eval_NAME.json found in the jobs' folders "
                        "(repeatable), e.g. last_feature-gap")
    a = p.parse_args(argv)
    root = Path(a.dir).expanduser()
    if not root.is_dir():
        print(f"fgssl.results: {root} is not a directory", file=sys.stderr)
        return 2
    ignore = list(DEFAULT_IGNORE) + [k for k in a.ignore if k not in DEFAULT_IGNORE]
    try:
        res = build_tables(root, ignore, a.metrics, a.digits, a.baseline, [Path(d) for d in a.floors],
                            a.evals)
    except ValueError as e:
        print(f"fgssl.results: {e}", file=sys.stderr)
        return 2
    if not res["groups"] and not res["failed"]:
        print(f"fgssl.results: no job directory (with .hydra/overrides.yaml or metrics.json) under {root}",
              file=sys.stderr)
        return 2
    print(res["markdown"], end="")
    if not a.no_write:
        (root / "results.md").write_text(res["markdown"])
        write_csv(res["csv_rows"], root / "results.csv", res["varying"], res["metrics"])
        print(f"\nwritten: {root / 'results.md'}, {root / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

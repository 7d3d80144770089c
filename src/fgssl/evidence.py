"""``python -m fgssl.evidence``: the evidence sweep, resumable across machines and sessions.

The comparison behind docs/results.md is a plan of jobs: every (method, regularizers) row times
every seed, all at one recipe (``experiment=cpu_evidence`` by default), plus the two floors. It
takes hours on a CPU, longer than one sitting, and checkpoints do not belong in git. So each job's
small record (``metrics.json``, ``curve.json``, the resolved config, its overrides and CSV log) is
copied into a record folder that *is* committed (``docs/evidence/<experiment>/``), and a job whose
record exists is never run again. Rerunning the same command on a fresh clone therefore continues
where the last one stopped; a job interrupted on this machine resumes from its own ``last.ckpt``
(rerunning train.py in the same run folder, the usual fgssl resume).

    python -m fgssl.evidence run                       # the whole plan, one job at a time
    python -m fgssl.evidence run --jobs 2              # two jobs at a time, the cores split between them
    python -m fgssl.evidence run --shard 0/2           # or split the plan over processes or machines
    python -m fgssl.evidence status                    # done / to do
    python -m fgssl.evidence collect SRC DST           # copy finished records by hand

Jobs run through ``train.py`` / ``evaluate.py`` in subprocesses, so each is exactly the command a
user would type (printed before it starts). This module only decides which of them still need to
run; Hydra composes and Lightning trains.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from fgssl import layout
from fgssl.config import run_slug
from fgssl.results import FLOOR_FILES
from fgssl.runs import find_job_dirs
from fgssl.workers import usable_cores

#: Every LCR row is also evaluated with plain GAP pooling on its own final checkpoint (``evaluate.py
#: ckpt=<run>/checkpoints/last.ckpt eval.feature=gap``; ``fgssl.results --evals last_feature-gap``): the pair
#: separates what LCR's training did to the features from what its pooling does at test time.
GAP_EVAL = "last_feature-gap"
KEEP = (layout.METRICS, layout.CURVE, f"{layout.CHECKPOINTS}/{layout.CONFIG}", layout.HYDRA_OVERRIDES,
        layout.CSV_LOG, f"{layout.EVAL_METRICS_PREFIX}{GAP_EVAL}.json")
ROOT = Path(__file__).resolve().parents[2]

#: The rows of the comparison: (method, synthesis, rationale). MoCo v2 gets all four, SimSiam three. The two
#: base rows come first: whether SSL beats the floors at this budget is the first question.
ROWS: Tuple[Tuple[str, str, str], ...] = (
    ("mocov2", "none", "none"), ("simsiam", "none", "none"),
    ("mocov2", "syn", "none"), ("mocov2", "none", "lcr"), ("mocov2", "syn", "lcr"),
    ("simsiam", "syn", "none"), ("simsiam", "none", "lcr"),
)


#: Diagnosis rows (``--ablations``; docs/evidence.md, "Diagnosing SYN and LCR"): each changes the one knob a
#: measurement of the default rows pointed at, and is paired by seed with its default row.
ABLATIONS: Tuple[Tuple[str, ...], ...] = (
    # the decoder's images are colour blobs after 1,000 steps at Adam 1e-4: does a faster decoder help SYN?
    ("mocov2", "syn", "none", "synthesis.decoder_lr=0.001"),
    # the variance and Grad-CAM criteria agree at chance level: does the selection matter at all?
    ("mocov2", "syn", "none", "synthesis.criterion=random"),
    # the branch's only gradient is weight x dL_fit, and L_fit stays flat at weight 0.01: a branch that fits
    ("mocov2", "none", "lcr", "rationale.weight=1.0"),
)


@dataclass(frozen=True)
class Job:
    kind: str  # "train" or a floor ("colorhist", "random")
    overrides: Tuple[str, ...]

    @property
    def name(self) -> str:
        if self.kind != "train":
            return f"floors/{self.kind}"
        method = self.overrides[0].split("=", 1)[1]
        return f"{method}/{run_slug('_'.join(self.overrides[1:]))}"

    def command(self, experiment: str, run_dir: Path, extra: Sequence[str] = ()) -> List[str]:
        common = [f"experiment={experiment}", *extra]
        if self.kind == "train":
            return [sys.executable, str(ROOT / "train.py"), *common, *self.overrides, f"hydra.run.dir={run_dir}"]
        return [sys.executable, str(ROOT / "evaluate.py"), *common, f"ckpt={self.kind}", f"out_dir={run_dir}",
                f"hydra.run.dir={run_dir}"]

    def followup(self, run_dir: Path) -> Optional[List[str]]:
        """The evaluation that follows a finished job (LCR rows: the same checkpoint with GAP pooling)."""
        if self.kind == "train" and "rationale=lcr" in self.overrides:
            return [sys.executable, str(ROOT / "evaluate.py"), f"ckpt={run_dir / layout.CHECKPOINTS / 'last.ckpt'}",
                    "eval.feature=gap"]
        return None

    def done(self, record: Path) -> bool:
        if self.kind == "train":
            return (record / self.name / "metrics.json").is_file()
        return any(any((record / self.name).glob(f)) for f in FLOOR_FILES)  # FLOOR_FILES are name patterns


def plan(seeds: Sequence[int], rows: Sequence[Tuple[str, ...]] = ROWS) -> List[Job]:
    """Floors first, then seed-major order: every row of seed 0, then of seed 1, ... (paired
    comparisons become available as early as possible). A row is (method, synthesis, rationale, *more
    overrides)."""
    jobs = [Job("colorhist", ()), Job("random", ())]
    for seed, (m, s, r, *more) in itertools.product(seeds, rows):
        jobs.append(Job("train", (f"method={m}", f"synthesis={s}", f"rationale={r}", *more, f"seed={seed}")))
    return jobs


def collect(src: Path, dst: Path) -> List[Path]:
    """Copy the finished jobs' records (and floor files) from ``src`` to ``dst``; returns the
    unfinished job folders."""
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


def _job_env(n_jobs: int) -> Optional[dict]:
    """The environment of one of ``n_jobs`` concurrent jobs: the cores split evenly between them (torch's
    default would give every job all of them, and ``n_jobs`` processes fighting over every core run slower
    than each on its own share). A thread count the user set (OMP_NUM_THREADS) is kept."""
    if n_jobs <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    threads = str(max(1, usable_cores() // n_jobs))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def run_jobs(todo: Sequence[Job], experiment: str, work: Path, record: Path, extra: Sequence[str] = (),
             n_jobs: int = 1, poll_s: float = 5.0) -> List[str]:
    """Run ``todo`` with at most ``n_jobs`` at a time, recording each job as soon as it finishes; returns the
    names of the failed jobs. One job at a time shows its own output; several at a time write it to
    ``<run folder>/evidence.log`` and print one line as each starts and ends. The next job starts as soon as
    any running one ends (a long SYN job does not hold back a shard of short ones, as ``--shard`` would).
    Interrupting stops the running jobs; a rerun resumes them from their checkpoints."""
    failed: List[str] = []
    env = _job_env(n_jobs)
    queue = list(enumerate(todo, 1))
    running: List[Tuple[Job, subprocess.Popen, float, object]] = []

    def finish(job: Job, rc: int, started: float) -> None:
        if rc != 0:
            failed.append(job.name)
        else:
            more = job.followup(work.resolve() / job.name)
            if more is not None:  # a short evaluation (seconds): run in place, its output with the job's
                print(f"  $ {' '.join(more[1:])}", flush=True)
                with open(work / job.name / "evidence.log", "a") if n_jobs > 1 else contextlib.nullcontext() as log:
                    if subprocess.run(more, cwd=ROOT, env=env, stdout=log, stderr=log).returncode != 0:
                        print(f"  warning: {job.name}: the GAP evaluation failed; the job is recorded without it",
                              flush=True)
            collect(work / job.name, record / job.name)
        if n_jobs > 1:
            state = "done" if rc == 0 else f"FAILED (exit {rc}; log: {work / job.name / 'evidence.log'})"
            print(f"  {state}: {job.name} after {(time.monotonic() - started) / 60:.1f} min", flush=True)

    try:
        while queue or running:
            while queue and len(running) < max(1, n_jobs):
                k, job = queue.pop(0)
                run_dir = work.resolve() / job.name
                cmd = job.command(experiment, run_dir, extra)
                print(f"[{k}/{len(todo)}] {job.name}\n  $ {' '.join(cmd[1:])}", flush=True)
                if n_jobs <= 1:
                    started = time.monotonic()
                    finish(job, subprocess.run(cmd, cwd=ROOT).returncode, started)
                    continue
                run_dir.mkdir(parents=True, exist_ok=True)
                log = open(run_dir / "evidence.log", "a")
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                running.append((job, proc, time.monotonic(), log))
            for entry in list(running):
                job, proc, started, log = entry
                rc = proc.poll()
                if rc is not None:
                    running.remove(entry)
                    log.close()
                    finish(job, rc, started)
            if running:
                time.sleep(poll_s)
    finally:
        for _job, proc, _, log in running:  # interrupted: stop the children (they resume on a rerun)
            proc.terminate()
            proc.wait()
            log.close()
    return failed


def _shard(text: Optional[str]) -> Tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise SystemExit(f"fgssl error: --shard {text!r} must be I/N with 0 <= I < N, e.g. 0/2") from None
    return i, n


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fgssl.evidence", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "status"):
        c = sub.add_parser(name)
        c.add_argument("--experiment", default="cpu_evidence")
        c.add_argument("--seeds", default="0,1,2")
        c.add_argument("--work", default=None, help="run folders (default multirun/<experiment>)")
        c.add_argument("--record", default=None, help="committed records (default docs/evidence/<experiment>)")
        c.add_argument("--shard", default=None, help="I/N: run every N-th job of the plan, starting at I")
        c.add_argument("--only", default=None, help="only jobs whose name contains this text (e.g. mocov2)")
        c.add_argument("--jobs", type=int, default=1,
                       help="jobs at a time, the CPU cores split evenly between them (default 1)")
        c.add_argument("--ablations", action="store_true",
                       help="the diagnosis rows (ABLATIONS) instead of the comparison")
        c.add_argument("extra", nargs="*", help="more Hydra overrides for every job (e.g. trainer=gpu)")
    c = sub.add_parser("collect", help="copy finished jobs' metrics, curves and configs from SRC to DST")
    c.add_argument("src")
    c.add_argument("dst")
    a = p.parse_args(argv)
    if a.cmd == "collect":
        src = Path(a.src)
        if not src.is_dir():
            print(f"fgssl error: {src} is not a directory", file=sys.stderr)
            return 2
        for j in collect(src, Path(a.dst)):
            print(f"not finished (rerun its command to resume): {j}")
        print(f"collected into {a.dst}")
        return 0

    try:
        seeds = [int(s) for s in a.seeds.split(",") if s != ""]
    except ValueError:
        print(f"fgssl error: --seeds {a.seeds!r} must be integers separated by commas", file=sys.stderr)
        return 2
    work = Path(a.work or f"multirun/{a.experiment}")
    record = Path(a.record or ROOT / "docs" / "evidence" / a.experiment)
    i, n = _shard(a.shard)
    rows = ABLATIONS if a.ablations else ROWS
    jobs = [j for k, j in enumerate(plan(seeds, rows)) if k % n == i and (a.only is None or a.only in j.name)]
    todo = [j for j in jobs if not j.done(record)]
    print(f"evidence {a.experiment}: {len(jobs) - len(todo)} of {len(jobs)} job(s) recorded in {record}")
    if a.cmd == "status":
        for j in todo:
            print(f"  to do: {j.name}")
        return 0
    if a.jobs < 1:
        print(f"fgssl error: --jobs {a.jobs} must be at least 1", file=sys.stderr)
        return 2
    failed = run_jobs(todo, a.experiment, work, record, a.extra, a.jobs)
    for name in failed:
        print(f"failed: {name} (its log is in {work / name}); rerun to retry", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

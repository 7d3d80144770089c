"""``python -m fgssl.bench``: training-step, data-pipeline, peer and retrieval benchmark (docs/bench.md)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, TextIO

from fgssl.bench.variants import DEFAULT_VARIANTS, METHODS, PRECISIONS, VARIANTS, unknown


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet50"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="images per step (each gives two views)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 on CPU, 30 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="discarded steps first (default: 2 on CPU, 10 on CUDA)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="32", choices=sorted(PRECISIONS))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every backbone's feature_map (use --warmup 3 or more: compiling happens there)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every method/variant this many times, alternating, and pool the steps (steadier ratios)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, of {','.join(VARIANTS)}, or Hydra overrides joined by '+' "
                        "(e.g. rationale=lcr+rationale.weight=0.5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for every run (repeatable), e.g. --set data=cub --set data.root=DIR")
    p.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the config's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own; 1 is steadier on a busy shared CPU)")


def _part_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-prime", action="store_true",
                   help="skip the untimed priming run that pays one-time library start-up before the first variant")
    p.add_argument("--no-real", action="store_true", help="skip the real-data step")
    p.add_argument("--no-steps", action="store_true",
                   help="skip the method/variant step table (e.g. to run only the pipeline and peer rows)")
    p.add_argument("--no-loader", action="store_true", help="skip the loader-alone measurement")
    p.add_argument("--loader-batches", type=int, default=None, help="timed loader batches (default 15 CPU, 50 CUDA)")
    p.add_argument("--loader-cache", default="off,on", help="data.cache settings for the loader: off,on / off / on")
    p.add_argument("--no-pipelines", action="store_true",
                   help="skip the device-vs-workers pipeline rows (real/synthetic, each alone, augmentation library)")
    p.add_argument("--no-peer", action="store_true", help="skip the lightly-built peer steps")
    p.add_argument("--no-retrieval", action="store_true")
    p.add_argument("--retrieval-n", type=int, default=None, help="features (default 10000, the size issue 6 sets)")
    p.add_argument("--retrieval-d", type=int, default=None, help="dimension (default 2048)")
    p.add_argument("--retrieval-classes", type=int, default=200)
    p.add_argument("--retrieval-chunk", type=int, default=None, help="default: eval.retrieval_chunk")
    p.add_argument("--retrieval-reps", type=int, default=3)
    p.add_argument("--out", default=None, help="write the JSON lines here instead of stdout")
    p.add_argument("--conf", default=None, help="conf/ directory (default: the repo's)")


def _check(a: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    a.methods = [m for m in a.methods.split(",") if m]
    a.variants = [v for v in a.variants.split(",") if v]
    for v in a.variants:
        if unknown(v):
            p.error(f"--variants: {unknown(v)}")
    for m in a.methods:
        if m not in METHODS:
            p.error(f"--methods: unknown method {m!r}; choose from {','.join(METHODS)}")
    if not set(a.loader_cache.split(",")) <= {"off", "on", ""}:
        p.error("--loader-cache: off,on / off / on")
    a.loader_cache = [{"off": False, "on": True}[c] for c in a.loader_cache.split(",") if c]
    if a.steps is not None and a.steps < 1 or a.warmup is not None and a.warmup < 0 or a.batch < 2 \
            or a.image_size < 8 or a.rounds < 1:
        p.error("need --steps >= 1, --warmup >= 0, --batch >= 2, --image-size >= 8, --rounds >= 1")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fgssl.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _model_args(p)
    _part_args(p)
    a = p.parse_args(argv)
    _check(a, p)
    import torch

    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    gpu = a.device == "cuda"
    a.steps = a.steps if a.steps is not None else (30 if gpu else 5)
    a.warmup = a.warmup if a.warmup is not None else (10 if gpu else 2)
    a.loader_batches = a.loader_batches or (50 if gpu else 15)
    a.retrieval_n = a.retrieval_n or 10000
    a.retrieval_d = a.retrieval_d or 2048
    a.precision = PRECISIONS[a.precision]
    return a


def json_safe(rec: Dict[str, Any]) -> Dict[str, Any]:
    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return fix(rec)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from fgssl.bench.report import format_report
    from fgssl.bench.runner import run

    a = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    stream: TextIO = sys.stdout
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        stream = open(a.out, "w")

    def emit(rec):
        stream.write(json.dumps(json_safe(rec)) + "\n")
        stream.flush()

    try:
        records = run(a, emit)
    finally:
        if a.out:
            stream.close()
    print(("\n" if not a.out else "") + format_report(records), flush=True)
    if a.out:
        print(f"\nJSON lines written to {a.out}")
    return 1 if any(r["kind"] == "error" for r in records) else 0

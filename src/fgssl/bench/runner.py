"""Runs every part the flags ask for, in one process, one after another: the step table, the loader alone,
the two pipelines, the peer, retrieval. Each record goes out as soon as it is made."""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

from fgssl.bench.compose import conf_dir
from fgssl.bench.loader import WorkersData, run_loader
from fgssl.bench.memory import MemoryMeter
from fgssl.bench.peer import run_peer
from fgssl.bench.pipelines import run_pipelines
from fgssl.bench.retrieval import run_retrieval
from fgssl.bench.step_table import StepTable

Put = Callable[[Dict[str, Any]], None]


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def env_record(a, meter: MemoryMeter) -> Dict[str, Any]:
    import pytorch_lightning as pl
    import torch

    return {"kind": "env", "device": a.device, "backbone": a.backbone, "image_size": a.image_size, "batch": a.batch,
            "precision": a.precision, "channels_last": a.channels_last, "compile": a.compile,
            "device_name": device_name(a.device), "steps": a.steps, "warmup": a.warmup, "rounds": a.rounds,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "lightning": pl.__version__, "python": platform.python_version(), "mem_kind": meter.kind,
            "overrides": list(a.overrides), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def run(a, emit: Put) -> List[Dict[str, Any]]:
    """Run every measurement ``a`` asks for; each record goes to ``emit`` as soon as it is made."""
    import torch

    records: List[Dict[str, Any]] = []

    def put(rec: Dict[str, Any]) -> None:
        records.append(rec)
        emit(rec)

    conf = conf_dir(a.conf)
    threads, matmul_precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_float32_matmul_precision("high")
    # Objects alive now (imported modules) are never garbage: keep them out of the collections that precede
    # each memory baseline, which are then much faster.
    gc.collect()
    gc.freeze()
    try:
        _parts(a, put, conf, MemoryMeter(a.device))
        return records
    finally:  # leave the process as it was (the tests call this in-process)
        gc.unfreeze()
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(matmul_precision)


def _parts(a, put: Put, conf: Path, meter: MemoryMeter) -> None:
    put(env_record(a, meter))
    data = WorkersData()  # the workers datamodules, shared by the real-data step and the loader
    StepTable(a, conf, meter, put, data).run()
    if not a.no_loader:
        run_loader(a, conf, put, data)
    data.clear()
    gc.collect()
    if not a.no_pipelines and not a.no_real and a.methods:
        run_pipelines(a, conf, meter, put)
    if not a.no_peer and a.methods and "base" in a.variants:  # the peer is compared with the base step
        run_peer(a, conf, meter, put)
    gc.collect()
    if not a.no_retrieval:
        run_retrieval(a, conf, put)

"""``python -m fgssl.bench``: training-step, data-loader and retrieval benchmark.

What is measured (all in one process, one after another, so that ratios compare
numbers taken on the same device in the same run):

* **Training step** of each method (``--methods``) and variant (``--variants``:
  ``base``, ``syn`` = +SYN, ``lcr`` = +LCR, ``both``). Methods are built with
  :func:`fgssl.methods.build_method` on the real ``conf/`` tree composed by Hydra
  with the variant's overrides, so SYN and LCR are exactly what ``train.py``
  would attach. The step is the method's real ``training_step`` run by a real
  ``pl.Trainer`` (manual optimisation, schedulers, EMA, queue, regularizer
  callbacks, mixed precision) on a fixed synthetic batch already on the device.
  A callback times each step; the first ``--warmup`` steps are discarded.

  - ``ms_per_step``: median wall time between the ends of consecutive steps
    (device synchronised), i.e. what one step costs the training loop,
    including the wait for the next batch; ``ms_compute`` is the median time
    from a step's start to its end (without that wait).
  - ``images_per_s``: ``batch / ms_per_step`` (source images; each gives two views).
  - ``peak_mem_mb``: peak memory during the timed steps minus the memory in use
    before the model was built (so model, gradients, optimizer state and
    activations are counted). On CUDA this is ``torch.cuda.max_memory_allocated``;
    on CPU it is the resident-set high-water mark (``VmHWM`` of
    ``/proc/self/status``, reset through ``/proc/self/clear_refs`` before the
    timed steps), or an RSS sampled every millisecond where that reset is not
    allowed. The ``mem_kind`` field of each line says which.
  - ratios ``syn/base``, ``lcr/base``, ``both/base`` of time and memory, and the
    ratio of the two base steps, MoCo v2 / SimSiam (``kind: "method_ratio"``).

* **Real data**: the ``base`` step again, fed by the real train loader of
  ``data=`` (cub53 by default, two MoCo v2 views), and its ratio to the
  synthetic-tensor step: ~1.0 means the data pipeline keeps the device fed.
* **Data loader alone**: images/s of the train loader with ``data.cache`` off
  and on (``setup_s`` is the time to build the dataset, i.e. decoding the
  cache).
* **Pipelines and peer** (:mod:`fgssl.bench_data`): real / synthetic step through the ``device`` and
  the ``workers`` pipeline, each pipeline alone, fgssl's batched views against ``kornia.augmentation``,
  and MoCo v2 / SimSiam steps built from lightly's heads and losses against fgssl's.
* **Retrieval at scale**: :func:`fgssl.eval.retrieval.retrieval_metrics` on
  ``N x D`` random features against the bare similarity product ``X @ X.T``.

Output: one JSON object per line (stdout, or ``--out FILE``), then a table.
A variant whose config group or module does not exist yet is skipped with a
note; a variant that fails is reported as an ``error`` line, and the rest runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

#: SYN at full cost from the first step (no nu warm-up or ramp); its statistics are
#: warm-started from one batch instead of a whole epoch (that pass is not timed anyway).
_SYN = ["synthesis=syn", "synthesis.warmup_epochs=0", "synthesis.ramp_epochs=0", "synthesis.warm_start_batches=1"]
#: Variant name -> (label, Hydra overrides).
VARIANTS: Dict[str, Tuple[str, List[str]]] = {
    "base": ("base", []),
    "syn": ("+SYN", _SYN),
    "lcr": ("+LCR", ["rationale=lcr"]),
    "both": ("+SYN+LCR", _SYN + ["rationale=lcr"]),
    # the speed knob: pairs for a quarter of the batch (not in the default set; --variants base,syn,syn25)
    "syn25": ("+SYN f=0.25", _SYN + ["synthesis.pair_fraction=0.25"]),
}
DEFAULT_VARIANTS = ("base", "syn", "lcr", "both")
METHODS = ("mocov2", "simsiam")
#: Targets from the issues (step time relative to the base method). SYN at the full batch: the pair is one
#: more SSL sample, so 2x is the floor (docs/method.md).
TARGETS = {"syn": {"time": 2.1}, "lcr": {"time": 1.1}, "both": {}, "syn25": {}}
PRECISIONS = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}
MiB = 2.0 ** 20

DEFAULT_CONF = Path(__file__).resolve().parents[2] / "conf"


# ====================================================================== config
def conf_dir(path: Optional[str] = None) -> Path:
    d = Path(path or os.environ.get("FGSSL_CONF") or DEFAULT_CONF)
    if not (d / "config.yaml").is_file():
        raise SystemExit(f"fgssl.bench: no config.yaml in {d}; pass --conf path/to/conf")
    return d


def compose(overrides: Sequence[str], conf: Path):
    """Compose ``conf/config.yaml`` with ``overrides``, as ``train.py`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fgssl.plugins import setup as register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


class Skip(Exception):
    """A variant that cannot be built yet (its config group or module is missing)."""


def _compose_variant(overrides: List[str], variant_overrides: List[str], conf: Path):
    """Compose; a failure caused by the variant's own (SYN/LCR) overrides becomes :class:`Skip`."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(overrides, conf)
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        groups = {o.split("=")[0].split(".")[0] for o in variant_overrides}
        if groups and any(g in msg for g in groups):
            raise Skip(f"config not available yet: {msg[:300]}") from None
        raise


# ====================================================================== memory
def _status_kb(field: str) -> Optional[int]:
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryMeter:
    """Peak memory of a region relative to a baseline, on CUDA or on CPU (RSS)."""

    def __init__(self, device: str):
        self.device = device
        self._sampler: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._peak_kb = 0
        if device == "cuda":
            self.kind = "cuda_max_memory_allocated"
        elif self._can_reset_hwm():
            self.kind = "cpu_peak_rss_delta (VmHWM, reset via clear_refs)"
        elif _status_kb("VmRSS") is not None:
            self.kind = "cpu_peak_rss_delta (VmRSS sampled every 1 ms)"
        else:
            self.kind = "unavailable"

    @staticmethod
    def _can_reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _status_kb("VmHWM") is not None
        except OSError:
            return False

    def current(self) -> int:
        """Bytes in use now (after collecting garbage)."""
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            return torch.cuda.memory_allocated()
        _malloc_trim()
        return (_status_kb("VmRSS") or 0) * 1024

    def reset_peak(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        elif "clear_refs" in self.kind:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        elif "sampled" in self.kind:
            self._stop_sampler()
            self._peak_kb = _status_kb("VmRSS") or 0
            self._stop.clear()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak_kb = max(self._peak_kb, _status_kb("VmRSS") or 0)

    def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._sampler = None

    def peak(self) -> Optional[int]:
        """Peak bytes since :meth:`reset_peak`."""
        import torch

        if self.device == "cuda":
            return torch.cuda.max_memory_allocated()
        if "clear_refs" in self.kind:
            return (_status_kb("VmHWM") or 0) * 1024
        if "sampled" in self.kind:
            self._stop_sampler()
            return max(self._peak_kb, _status_kb("VmRSS") or 0) * 1024
        return None


# ====================================================================== harness
class SyntheticBatches:
    """``n`` copies of one fixed ``((x1, x2), y)`` batch, already on the device."""

    def __init__(self, batch: int, size: int, n: int, device):
        import torch

        g = torch.Generator().manual_seed(0)
        x1 = torch.randn(batch, 3, size, size, generator=g).to(device)
        x2 = torch.randn(batch, 3, size, size, generator=g).to(device)
        y = torch.zeros(batch, dtype=torch.long, device=device)
        self.batch, self.n = ((x1, x2), y), n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        for _ in range(self.n):
            yield self.batch


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _make_timer(device: str, warmup: int, meter: MemoryMeter):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Records synchronised start/end times of every training step."""

        def __init__(self):
            self.starts: List[float] = []
            self.ends: List[float] = []
            self.peak: Optional[int] = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync(device)
            if len(self.starts) == warmup:
                meter.reset_peak()
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            self.ends.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            self.peak = meter.peak()

        def step_times(self) -> Tuple[List[float], List[float]]:
            """(end-to-end intervals, start-to-end compute times) of the timed steps, in s."""
            total, compute = [], []
            for i in range(warmup, len(self.ends)):
                prev = self.ends[i - 1] if i > 0 else self.starts[0]
                total.append(self.ends[i] - prev)
                compute.append(self.ends[i] - self.starts[i])
            return total, compute

    return StepTimer()


@contextlib.contextmanager
def _quiet():
    """Silence Lightning's info lines and its run-of-the-mill warnings."""
    names = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(pytorch_lightning|lightning_fabric|lightning)\b.*")
        warnings.filterwarnings("ignore", message=".*(num_workers|LeafSpec|max_steps|logging interval).*")
        try:
            yield
        finally:
            for n, lv in levels.items():
                logging.getLogger(n).setLevel(lv)


def time_training(cfg, loader, steps: int, warmup: int, device: str, meter: MemoryMeter,
                  use_compile: bool = False) -> Dict[str, Any]:
    """Build the method from ``cfg`` and time ``steps`` training steps after ``warmup``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fgssl-bench-") as root_dir:  # whatever callbacks write
        return _time_training(cfg, loader, steps, warmup, device, meter, use_compile, root_dir)


def _time_training(cfg, loader, steps: int, warmup: int, device: str, meter: MemoryMeter,
                   use_compile: bool, root_dir: str) -> Dict[str, Any]:
    import pytorch_lightning as pl
    import torch

    from fgssl.factory import build_model

    pl.seed_everything(int(cfg.seed), verbose=False)
    base_mem = meter.current()
    method = build_model(cfg)
    if cfg.trainer.channels_last:
        method = method.to(memory_format=torch.channels_last)
    from fgssl.nets.backbones import compile_backbones

    n_compiled = compile_backbones(method) if use_compile else 0
    timer = _make_timer(device, warmup, meter)
    callbacks: List[pl.Callback] = [timer]
    for reg in method.regularizers:
        callbacks.extend(reg.callbacks())
    with _quiet():
        trainer = pl.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=cfg.trainer.precision,
            # One epoch of warmup + steps batches. (Not max_steps: under manual optimisation
            # Lightning counts every optimizer.step(), and SYN's decoder has its own optimizer.)
            max_epochs=1, limit_train_batches=warmup + steps, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0, callbacks=callbacks, default_root_dir=root_dir,
            deterministic=False,
        )
        trainer.fit(method, train_dataloaders=loader)
    total, compute = timer.step_times()
    if len(total) < steps:
        raise RuntimeError(f"only {len(total)} of {steps} timed steps ran (the loader has too few batches?)")
    peak = timer.peak
    params = sum(p.numel() for p in method.parameters() if p.requires_grad)
    del trainer, method, timer, callbacks
    return {
        "ms_per_step": statistics.median(total) * 1e3,
        "peak_mem_mb": None if peak is None else max(0, peak - base_mem) / MiB,
        "mem_kind": meter.kind,
        "trainable_params_m": params / 1e6,
        "compiled_backbones": n_compiled,
        "step_ms": [t * 1e3 for t in total],
        "compute_ms": [t * 1e3 for t in compute],
        "batch": int(cfg.data.batch_size),
    }


# ====================================================================== loader
def build_datamodule(cfg):
    from fgssl.data.datamodule import FGVRDataModule

    dm = FGVRDataModule(cfg.data, cfg.eval, None, 1)
    dm.announce = False  # stdout carries the JSON lines
    dm.setup()
    return dm


def time_loader(loader, batches: int, warmup: int, batch: int) -> Dict[str, Any]:
    """Images/s of a train loader alone (after ``warmup`` batches, e.g. worker start-up)."""
    it = iter(loader)
    n_avail = len(loader)
    if warmup + batches > n_avail:
        batches = max(1, n_avail - warmup)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    del it
    ips = batches * batch / dt
    return {"images_per_s": ips, "views_per_s": 2 * ips, "batches": batches, "ms_per_batch": dt / batches * 1e3}


# ====================================================================== retrieval
def time_retrieval(n: int, d: int, device: str, reps: int, chunk: int, classes: int) -> Dict[str, Any]:
    """Median time of ``retrieval_metrics`` vs the bare ``X @ X.T`` on ``n x d`` random features."""
    import torch
    import torch.nn.functional as F

    from fgssl.eval.retrieval import retrieval_metrics

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, d, generator=g).to(device)
    labels = torch.randint(0, max(1, classes), (n,), generator=g).to(device)
    x = F.normalize(feats, dim=1)

    def run_retrieval():
        try:
            return retrieval_metrics(feats, labels, chunk=chunk)
        except TypeError:  # a signature without ``chunk``
            return retrieval_metrics(feats, labels)

    def run_matmul():
        return x @ x.t()

    def timed(fn: Callable) -> float:
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        dt = time.perf_counter() - t0
        del out
        return dt

    timed(run_matmul)  # warm-up (allocations, kernels)
    timed(run_retrieval)
    t_mm, t_ret = [], []
    for _ in range(max(1, reps)):  # interleaved, so drifting load hits both alike
        t_mm.append(timed(run_matmul))
        t_ret.append(timed(run_retrieval))
    ms_ret, ms_mm = statistics.median(t_ret) * 1e3, statistics.median(t_mm) * 1e3
    return {"n": n, "d": d, "chunk": chunk, "classes": classes, "reps": max(1, reps),
            "ms_retrieval": ms_ret, "ms_matmul": ms_mm, "ratio": ms_ret / ms_mm if ms_mm > 0 else None}


# ====================================================================== report
def _fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _table(headers: List[str], rows: List[List[str]], right: Sequence[int] = ()) -> List[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def format_report(records: List[Dict[str, Any]]) -> str:
    """The human-readable table of a list of bench records (the JSON lines)."""
    env = next((r for r in records if r["kind"] == "env"), {})
    out = []
    if env:
        out.append(
            f"fgssl bench on {env.get('device_name', env.get('device'))} ({env.get('device')}, "
            f"{env.get('threads')} torch threads): {env.get('backbone')} {env.get('image_size')}px, batch "
            f"{env.get('batch')}, precision {env.get('precision')}, channels_last "
            f"{'on' if env.get('channels_last') else 'off'}, compile {'on' if env.get('compile') else 'off'}; "
            f"{env.get('steps')} timed steps after {env.get('warmup')} warm-up"
            + (f", x{env['rounds']} rounds (alternating, pooled)" if env.get("rounds", 1) > 1 else "")
        )
        out.append(f"memory: {env.get('mem_kind')}")
    steps = [r for r in records if r["kind"] == "step"]
    if steps:
        rows = []
        for r in steps:
            q = r if r.get("time_ratio") is not None else None
            tgt = "" if q is None else "/".join(f"{k}<={v}" for k, v in q.get("targets", {}).items())
            rows.append([
                r["method"], VARIANTS.get(r["variant"], (r["variant"],))[0], r["data"],
                _fmt(r["ms_per_step"]), _fmt(r["ms_std"]), _fmt(r["ms_compute"]), _fmt(r["images_per_s"]),
                _fmt(r["peak_mem_mb"], ".0f"),
                _fmt(q["time_ratio"], ".2f") + "x" if q else "", _fmt(q["mem_ratio"], ".2f") + "x" if q else "",
                tgt,
            ])
        out += [""] + _table(["method", "variant", "data", "ms/step", "+-", "compute", "img/s", "peak MB",
                              "time/base", "mem/base", "target"], rows, right=range(3, 10))
    for r in (r for r in records if r["kind"] == "method_ratio"):
        out.append("")
        out.append(f"base step, MoCo v2 / SimSiam: {r['ratio']:.2f}x "
                   f"({r['ms_mocov2']:.1f} vs {r['ms_simsiam']:.1f} ms)")
    rvs = [r for r in records if r["kind"] == "real_vs_synthetic"]
    if rvs:
        out.append("")
        out.append("real-data step / synthetic-tensor step: " + ", ".join(
            f"{r['method']} {r['ratio']:.2f}x ({r['ms_real']:.1f} vs {r['ms_synthetic']:.1f} ms)" for r in rvs)
            + "  (target on GPU: <= 1.1x)")
    loaders = [r for r in records if r["kind"] == "loader"]
    if loaders:
        rows = [[r["dataset"], "on" if r["cache"] else "off", str(r["workers"]), _fmt(r["images_per_s"]),
                 _fmt(r["views_per_s"]), _fmt(r["ms_per_batch"]), _fmt(r["setup_s"], ".2f")] for r in loaders]
        out += [""] + _table(["loader", "cache", "workers", "img/s", "views/s", "ms/batch", "setup s"], rows,
                             right=range(2, 7))
    from fgssl.bench_data import report_lines

    out += report_lines(records)
    for r in (r for r in records if r["kind"] == "retrieval"):
        out.append("")
        out.append(f"retrieval {r['n']}x{r['d']} (chunk {r['chunk']}): retrieval_metrics {r['ms_retrieval']:.1f} ms, "
                   f"bare X@X.T {r['ms_matmul']:.1f} ms -> {_fmt(r['ratio'], '.2f')}x  (target <= 2x)")
    notes = [r for r in records if r["kind"] in ("skip", "error")]
    if notes:
        out.append("")
        for r in notes:
            what = " ".join(str(r[k]) for k in ("method", "variant", "part") if r.get(k))
            out.append(f"{r['kind']}: {what}: {r['reason']}")
    return "\n".join(out)


# ====================================================================== main
def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fgssl.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, of {','.join(VARIANTS)}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for every run (repeatable), e.g. --set data=cub --set data.root=DIR")
    p.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the config's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own; 1 is steadier on a busy shared CPU)")
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
    a = p.parse_args(argv)
    a.methods = [m for m in a.methods.split(",") if m]
    a.variants = [v for v in a.variants.split(",") if v]
    for v in a.variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant {v!r}; choose from {','.join(VARIANTS)}")
    for m in a.methods:
        if m not in METHODS:
            p.error(f"--methods: unknown method {m!r}; choose from {','.join(METHODS)}")
    a.loader_cache = [{"off": False, "on": True}[c] for c in a.loader_cache.split(",") if c] \
        if set(a.loader_cache.split(",")) <= {"off", "on", ""} else p.error("--loader-cache: off,on / off / on")
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
    if a.steps < 1 or a.warmup < 0 or a.batch < 2 or a.image_size < 8 or a.rounds < 1:
        p.error("need --steps >= 1, --warmup >= 0, --batch >= 2, --image-size >= 8, --rounds >= 1")
    a.precision = PRECISIONS[a.precision]
    return a


def base_overrides(a: argparse.Namespace, method: str) -> List[str]:
    ov = [
        f"method={method}", f"backbone={a.backbone}", f"data.image_size={a.image_size}",
        f"data.batch_size={a.batch}", f"trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}",
        f"trainer.precision={a.precision}", f"trainer.channels_last={str(a.channels_last).lower()}",
        "trainer.devices=1", "trainer.strategy=auto", "trainer.sync_batchnorm=false", "logger=none",
    ]
    if a.workers is not None:
        ov.append(f"data.num_workers={a.workers}")
    return ov + list(a.overrides)


def _num_train(cfg) -> Optional[int]:
    from fgssl.data.readers import read_split

    try:
        return len(read_split(cfg.data.name, cfg.data.root, "train").samples)
    except Exception:  # noqa: BLE001 - the synthetic step does not need the data
        return None


def _resolve_queue(cfg, num_train: Optional[int]) -> None:
    from omegaconf import open_dict

    from fgssl.factory import resolve_derived

    with open_dict(cfg):
        resolve_derived(cfg, num_train or 4096, 1)


def _error_reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:500]


def _is_missing_component(e: BaseException) -> bool:
    return isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("fgssl")


def run(a: argparse.Namespace, emit: Callable[[Dict[str, Any]], None]) -> List[Dict[str, Any]]:
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
    # Objects alive now (imported modules) are never garbage: keep them out of the
    # collections that precede each memory baseline, which are then much faster.
    gc.collect()
    gc.freeze()
    try:
        return _run(a, put, records, conf, meter=MemoryMeter(a.device))
    finally:  # leave the process as it was (the tests call this in-process)
        gc.unfreeze()
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(matmul_precision)


def _run(a: argparse.Namespace, put: Callable[[Dict[str, Any]], None], records: List[Dict[str, Any]],
         conf: Path, meter: MemoryMeter) -> List[Dict[str, Any]]:
    import pytorch_lightning as pl
    import torch

    common = {"device": a.device, "backbone": a.backbone, "image_size": a.image_size, "batch": a.batch,
              "precision": a.precision, "channels_last": a.channels_last, "compile": a.compile}
    put({"kind": "env", **common, "device_name": _device_name(a.device), "steps": a.steps, "warmup": a.warmup,
         "rounds": a.rounds,
         "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
         "lightning": pl.__version__, "python": platform.python_version(), "mem_kind": meter.kind,
         "overrides": list(a.overrides), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})

    num_train: Optional[int] = None
    dms: Dict[bool, Any] = {}  # data.cache -> set-up datamodule (shared by loader and real-data runs)
    dm_setup_s: Dict[bool, float] = {}

    def datamodule(cfg, cache: bool):
        if cache not in dms:
            from omegaconf import open_dict

            with open_dict(cfg):
                cfg.data.cache = cache
                cfg.data.pipeline = "workers"  # these rows are the workers path; bench_data has both pipelines
            t0 = time.perf_counter()
            dms[cache] = build_datamodule(cfg)
            dm_setup_s[cache] = time.perf_counter() - t0
        return dms[cache]

    # ---------------------------------------------------------------- priming
    # One untimed short run first, so that one-time costs (lazy library start-up,
    # kernel selection, allocator pools) are not charged to whichever variant runs first.
    if a.methods and a.variants and not a.no_prime:
        try:
            cfg = compose(base_overrides(a, a.methods[0]), conf)
            num_train = _num_train(cfg)
            _resolve_queue(cfg, num_train)
            n = 2 if a.warmup > 0 else 1
            time_training(cfg, SyntheticBatches(a.batch, a.image_size, n, torch.device(a.device)), 1, n - 1,
                          a.device, meter, a.compile)
        except Exception as e:  # noqa: BLE001 - the timed runs will report it
            print(f"fgssl.bench: priming run failed ({_error_reason(e)})", file=sys.stderr)

    # ---------------------------------------------------------------- training steps
    # Every (method, variant) once per round; with --rounds > 1 the variants alternate,
    # so a load that drifts during the run weighs on all of them alike. The step times
    # of all rounds are pooled before the medians and the ratios are taken.
    runs: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    cfgs: Dict[Tuple[str, str], Any] = {}
    dead: set = set()
    variants = list(dict.fromkeys(a.variants))  # each once per round
    for rnd in range(0 if a.no_steps else a.rounds):
        for method in a.methods:
            for variant in variants:
                if (method, variant) in dead:
                    continue
                vov = VARIANTS[variant][1]
                head = {"method": method, "variant": variant}
                try:
                    if (method, variant) not in cfgs:
                        cfg = _compose_variant(base_overrides(a, method) + vov, vov, conf)
                        if num_train is None:
                            num_train = _num_train(cfg)
                        _resolve_queue(cfg, num_train)
                        cfgs[(method, variant)] = cfg
                    cfg = cfgs[(method, variant)]
                    loader = SyntheticBatches(a.batch, a.image_size, a.warmup + a.steps, torch.device(a.device))
                    res = time_training(cfg, loader, a.steps, a.warmup, a.device, meter, a.compile)
                except Skip as e:
                    dead.add((method, variant))
                    put({"kind": "skip", **head, "reason": str(e)})
                    continue
                except Exception as e:  # noqa: BLE001 - report and go on with the other variants
                    dead.add((method, variant))
                    if _is_missing_component(e):
                        put({"kind": "skip", **head, "reason": f"component not available yet: {_error_reason(e)}"})
                    else:
                        put({"kind": "error", **head, "reason": _error_reason(e)})
                        traceback.print_exc(file=sys.stderr)
                    continue
                runs.setdefault((method, variant, "synthetic"), []).append(res)
                _progress(a, rnd, method, variant, "synthetic", res)

                if variant == "base" and not a.no_real and (method, "real") not in dead:
                    try:
                        dm = datamodule(cfg, bool(cfg.data.cache))
                        loader = dm.train_dataloader()
                        if len(loader) < a.warmup + a.steps:
                            raise RuntimeError(f"the train loader has {len(loader)} batches < warm-up + steps")
                        real = time_training(cfg, loader, a.steps, a.warmup, a.device, meter, a.compile)
                        del loader
                    except Exception as e:  # noqa: BLE001
                        dead.add((method, "real"))
                        put({"kind": "error", **head, "part": "real-data step", "reason": _error_reason(e)})
                        traceback.print_exc(file=sys.stderr)
                    else:
                        runs.setdefault((method, variant, "real"), []).append(real)
                        _progress(a, rnd, method, variant, str(cfg.data.name), real)

    for method in a.methods:
        base = runs.get((method, "base", "synthetic"))
        agg_base = _pool(base) if base else None
        for variant in variants:
            rs = runs.get((method, variant, "synthetic"))
            if not rs:
                continue
            vov = VARIANTS[variant][1]
            head = {"method": method, "variant": variant}
            agg = _pool(rs)
            ratio = None
            if variant != "base" and agg_base is not None:
                mem, mem_b = agg["peak_mem_mb"], agg_base["peak_mem_mb"]
                ratio = {"time_ratio": agg["ms_per_step"] / agg_base["ms_per_step"],
                         "mem_ratio": (mem / mem_b) if mem is not None and mem_b else None,
                         "targets": TARGETS.get(variant, {})}
            put({"kind": "step", **head, "data": "synthetic", **common, "steps": a.steps, "warmup": a.warmup,
                 "rounds": len(rs), "overrides": vov, **agg, **(ratio or {})})
            if ratio:
                put({"kind": "ratio", **head, "of": f"{variant}/base", **ratio})
            real = runs.get((method, variant, "real"))
            if real and agg_base is not None:
                cfg = cfgs[(method, variant)]
                agg_real = _pool(real)
                put({"kind": "step", **head, "data": str(cfg.data.name), "cache": bool(cfg.data.cache),
                     "workers": int(cfg.data.num_workers), **common, "steps": a.steps, "warmup": a.warmup,
                     "rounds": len(real), "overrides": vov, **agg_real})
                put({"kind": "real_vs_synthetic", "method": method, "data": str(cfg.data.name),
                     "ms_real": agg_real["ms_per_step"], "ms_synthetic": agg_base["ms_per_step"],
                     "ratio": agg_real["ms_per_step"] / agg_base["ms_per_step"]})

    bases = {m: runs.get((m, "base", "synthetic")) for m in ("mocov2", "simsiam")}
    if all(bases.values()):
        ms = {m: _pool(r)["ms_per_step"] for m, r in bases.items()}
        put({"kind": "method_ratio", "of": "mocov2/simsiam", "ms_mocov2": ms["mocov2"], "ms_simsiam": ms["simsiam"],
             "ratio": ms["mocov2"] / ms["simsiam"]})

    # ---------------------------------------------------------------- loader alone
    if not a.no_loader:
        cfg = compose(base_overrides(a, a.methods[0] if a.methods else "mocov2"), conf)
        for cache in a.loader_cache:
            try:
                dm = datamodule(cfg, cache)
                loader = dm.train_dataloader()
                res = time_loader(loader, a.loader_batches, 2, a.batch)
                del loader
            except Exception as e:  # noqa: BLE001
                put({"kind": "error", "part": f"loader (cache {'on' if cache else 'off'})",
                     "reason": _error_reason(e)})
                continue
            put({"kind": "loader", "dataset": str(cfg.data.name), "cache": cache,
                 "workers": int(cfg.data.num_workers), "batch": a.batch, "image_size": a.image_size,
                 "setup_s": dm_setup_s[cache], "num_train": dm.num_train, **res})
    dms.clear()
    gc.collect()

    _run_data_parts(a, put, conf, meter)

    # ---------------------------------------------------------------- retrieval
    if not a.no_retrieval:
        chunk = a.retrieval_chunk
        if chunk is None:
            with contextlib.suppress(Exception):
                chunk = int(compose(["logger=none"], conf).eval.retrieval_chunk)
        try:
            res = time_retrieval(a.retrieval_n, a.retrieval_d, a.device, a.retrieval_reps, chunk or 1024,
                                 a.retrieval_classes)
        except Exception as e:  # noqa: BLE001
            put({"kind": "error", "part": "retrieval", "reason": _error_reason(e)})
        else:
            put({"kind": "retrieval", "device": a.device, **res})
    return records


def _run_data_parts(a: argparse.Namespace, put: Callable[[Dict[str, Any]], None], conf: Path,
                    meter: MemoryMeter) -> None:
    """Issue 12's rows (fgssl.bench_data): both pipelines, each alone, the augmentation library, the peer."""
    from fgssl import bench_data

    if not a.no_pipelines and not a.no_real and a.methods:
        bench_data.run_pipelines(a, conf, meter, put)
    if not a.no_peer and a.methods and "base" in a.variants:  # the peer is compared with the base step
        bench_data.run_peer(a, conf, meter, put)
    gc.collect()


def _pool(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One record from the runs of several rounds: the step times pooled, the median peak memory."""
    steps = [t for r in results for t in r["step_ms"]]
    comp = [t for r in results for t in r["compute_ms"]]
    mems = [r["peak_mem_mb"] for r in results if r["peak_mem_mb"] is not None]
    ms = statistics.median(steps)
    out = dict(results[0])
    out.update({
        "ms_per_step": ms, "ms_mean": statistics.fmean(steps),
        "ms_std": statistics.stdev(steps) if len(steps) > 1 else 0.0,
        "ms_compute": statistics.median(comp), "images_per_s": out["batch"] / (ms / 1e3),
        "peak_mem_mb": statistics.median(mems) if mems else None,
        "step_ms": steps, "round_ms": [r["ms_per_step"] for r in results],
    })
    out.pop("compute_ms", None)
    out.pop("batch", None)
    return out


def _progress(a: argparse.Namespace, rnd: int, method: str, variant: str, data: str, res: Dict[str, Any]) -> None:
    rounds = f"round {rnd + 1}/{a.rounds} " if a.rounds > 1 else ""
    mem = "" if res["peak_mem_mb"] is None else f", peak {res['peak_mem_mb']:.0f} MB"
    print(f"fgssl.bench: {rounds}{method} {VARIANTS[variant][0]} {data}: {res['ms_per_step']:.1f} ms/step{mem}",
          file=sys.stderr, flush=True)


def _json_safe(rec: Dict[str, Any]) -> Dict[str, Any]:
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
    a = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    stream: TextIO
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        stream = open(a.out, "w")
    else:
        stream = sys.stdout

    def emit(rec):
        stream.write(json.dumps(_json_safe(rec)) + "\n")
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


if __name__ == "__main__":
    sys.exit(main())

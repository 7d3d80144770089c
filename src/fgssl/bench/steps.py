"""The training step of each method and variant, timed by a callback inside a real ``pl.Trainer`` run of the
method's own ``training_step`` (manual optimisation, schedulers, EMA, queue, the regularizers' callbacks,
mixed precision) on a fixed synthetic batch already on the device; the first ``warmup`` steps are
discarded. ``ms_per_step`` is the median time between the ends of consecutive steps (the wait for the next
batch included), ``ms_compute`` from a step's start to its end."""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple

from fgssl.bench.compose import build_model
from fgssl.bench.memory import MemoryMeter, MiB


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


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def make_timer(device: str, warmup: int, meter: MemoryMeter):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Records synchronised start/end times of every training step."""

        def __init__(self):
            self.starts: List[float] = []
            self.ends: List[float] = []
            self.peak: Optional[int] = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync(device)
            if len(self.starts) == warmup:
                meter.reset_peak()
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync(device)
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
def quiet():
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


def fit_timed(module, loader, steps: int, warmup: int, device: str, precision: str, meter: MemoryMeter,
              callbacks=()):
    """Fit ``module`` for one epoch of ``warmup + steps`` batches; returns the step timer."""
    import pytorch_lightning as pl

    timer = make_timer(device, warmup, meter)
    with tempfile.TemporaryDirectory(prefix="fgssl-bench-") as root, quiet():  # whatever callbacks write
        trainer = pl.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
            # One epoch of warmup + steps batches. (Not max_steps: under manual optimisation
            # Lightning counts every optimizer.step(), and SYN's decoder has its own optimizer.)
            max_epochs=1, limit_train_batches=warmup + steps, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0, callbacks=[timer, *callbacks], default_root_dir=root, deterministic=False,
        )
        trainer.fit(module, train_dataloaders=loader)
    total, _ = timer.step_times()
    if len(total) < steps:
        raise RuntimeError(f"only {len(total)} of {steps} timed steps ran (the loader has too few batches?)")
    return timer


def time_training(cfg, loader, steps: int, warmup: int, device: str, meter: MemoryMeter,
                  use_compile: bool = False) -> Dict[str, Any]:
    """Build the method from ``cfg`` (the training factory) and time ``steps`` training steps after ``warmup``."""
    import pytorch_lightning as pl
    import torch

    from fgssl.nets.backbones import compile_backbones

    pl.seed_everything(int(cfg.seed), verbose=False)
    base_mem = meter.current()
    method = build_model(cfg)
    if cfg.trainer.channels_last:
        method = method.to(memory_format=torch.channels_last)
    n_compiled = compile_backbones(method) if use_compile else 0
    callbacks = [cb for reg in method.regularizers for cb in reg.callbacks()]
    timer = fit_timed(method, loader, steps, warmup, device, str(cfg.trainer.precision), meter, callbacks)
    total, compute = timer.step_times()
    peak = timer.peak
    params = sum(p.numel() for p in method.parameters() if p.requires_grad)
    del method, timer, callbacks
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


def time_module(module, loader, steps: int, warmup: int, device: str, precision: str, meter) -> Dict[str, Any]:
    """Median step time of any LightningModule (the peer's) under the same Trainer settings."""
    total, _ = fit_timed(module, loader, steps, warmup, device, precision, meter).step_times()
    return {"ms_per_step": statistics.median(total) * 1e3, "step_ms": [t * 1e3 for t in total]}


def pool(results: List[Dict[str, Any]]) -> Dict[str, Any]:
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

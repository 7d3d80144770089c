"""The train loader alone: images/s of the workers path with ``data.cache`` off and on after 2 warm-up
batches (worker start-up); ``setup_s`` is the time to build the dataset (decoding the RAM cache when on)."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict

from fgssl.bench.compose import base_overrides, compose, datamodule, error_reason
from fgssl.bench.steps import sync


class WorkersData:
    """Set-up datamodules of the workers path by ``data.cache``, shared by the real-data step and the loader."""

    def __init__(self):
        self.dms: Dict[bool, Any] = {}
        self.setup_s: Dict[bool, float] = {}

    def get(self, cfg, cache: bool):
        if cache not in self.dms:
            from omegaconf import open_dict

            with open_dict(cfg):
                cfg.data.cache = cache
            t0 = time.perf_counter()
            self.dms[cache] = datamodule(cfg, "workers")  # these rows are the workers path; pipelines has both
            self.setup_s[cache] = time.perf_counter() - t0
        return self.dms[cache]

    def clear(self) -> None:
        self.dms.clear()


def time_loader(loader, batches: int, warmup: int, batch: int, device: str = "cpu") -> Dict[str, Any]:
    """Images/s of a train loader alone, after ``warmup`` batches; device batches are synchronised (their work
    is asynchronous)."""
    it = iter(loader)
    batches = max(1, min(batches, len(loader) - warmup))
    for _ in range(warmup):
        next(it)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
        sync(device)
    dt = time.perf_counter() - t0
    del it
    ips = batches * batch / dt
    return {"images_per_s": ips, "views_per_s": 2 * ips, "batches": batches, "ms_per_batch": dt / batches * 1e3}


def run_loader(a, conf, put: Callable[[Dict[str, Any]], None], data: WorkersData) -> None:
    cfg = compose(base_overrides(a, a.methods[0] if a.methods else "mocov2"), conf)
    for cache in a.loader_cache:
        try:
            dm = data.get(cfg, cache)
            res = time_loader(dm.train_dataloader(), a.loader_batches, 2, a.batch)
        except Exception as e:  # noqa: BLE001
            put({"kind": "error", "part": f"loader (cache {'on' if cache else 'off'})", "reason": error_reason(e)})
            continue
        put({"kind": "loader", "dataset": str(cfg.data.name), "cache": cache, "workers": int(cfg.data.num_workers),
             "batch": a.batch, "image_size": a.image_size, "setup_s": data.setup_s[cache],
             "num_train": dm.num_train, **res})

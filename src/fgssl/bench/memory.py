"""Peak memory of a region relative to a baseline: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the
resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``), or an RSS sampled every
millisecond where that reset is not allowed."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import threading
from pathlib import Path
from typing import Optional

MiB = 2.0 ** 20


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


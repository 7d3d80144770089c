"""``fgssl.bench.steps``: pooling rounds, and the model built by the training factory."""

from __future__ import annotations

import statistics

import pytest
import torch

from fgssl import bench
from fgssl.bench import steps


def test_rounds_are_pooled_and_reported():
    """--rounds: the step times of every round are pooled; the table shows the ratios."""
    def run(ms, mem):
        return {"ms_per_step": statistics.median(ms), "peak_mem_mb": mem, "mem_kind": "x", "step_ms": ms,
                "compute_ms": [m - 1 for m in ms], "batch": 8, "trainable_params_m": 1.0, "compiled_backbones": 0}

    agg = steps.pool([run([10.0, 12.0], 100.0), run([30.0, 11.0], 120.0), run([13.0, 14.0], 90.0)])
    assert agg["ms_per_step"] == pytest.approx(12.5) and agg["ms_compute"] == pytest.approx(11.5)
    assert agg["round_ms"] == [11.0, 20.5, 13.5] and len(agg["step_ms"]) == 6
    assert agg["peak_mem_mb"] == 100.0 and agg["images_per_s"] == pytest.approx(8 / 0.0125)
    assert "compute_ms" not in agg and "batch" not in agg

    recs = [{"kind": "env", "device": "cpu", "rounds": 3, "steps": 2, "warmup": 1},
            {"kind": "step", "method": "mocov2", "variant": "base", "data": "synthetic", **agg},
            {"kind": "step", "method": "mocov2", "variant": "syn", "data": "synthetic", **agg,
             "time_ratio": 1.25, "mem_ratio": 1.5, "targets": {"time": 1.5, "mem": 1.5}}]
    table = bench.format_report(recs)
    assert "x3 rounds" in table and "1.25x" in table and "time<=1.5/mem<=1.5" in table and "+SYN" in table


def test_the_method_comes_from_the_training_factory(monkeypatch):
    """The bench builds its model with the factory ``train.py`` uses (no copy of it)."""
    import fgssl.factory
    from fgssl.bench.compose import compose, conf_dir, resolve
    from fgssl.bench.memory import MemoryMeter

    built = []
    real = fgssl.factory.build_model
    monkeypatch.setattr(fgssl.factory, "build_model", lambda cfg: built.append(cfg.method.name) or real(cfg))
    cfg = compose(["method=simsiam", "data.image_size=32", "data.batch_size=4", "logger=none"], conf_dir())
    resolve(cfg, 100)
    res = steps.time_training(cfg, steps.SyntheticBatches(4, 32, 2, torch.device("cpu")), 1, 1, "cpu",
                              MemoryMeter("cpu"))
    assert built == ["simsiam"] and len(res["step_ms"]) == 1

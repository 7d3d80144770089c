"""``python -m fgssl.bench`` on a tiny configuration: the JSON lines parse and carry their keys."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from fgssl import bench

STEP_KEYS = {"method", "variant", "data", "device", "backbone", "image_size", "batch", "precision", "steps",
             "warmup", "ms_per_step", "ms_std", "ms_compute", "images_per_s", "peak_mem_mb", "mem_kind",
             "trainable_params_m", "step_ms"}


def read_lines(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


TINY = ["--backbone", "resnet18", "--image-size", "32", "--batch", "4", "--warmup", "1", "--steps", "1",
        "--device", "cpu", "--variants", "base", "--retrieval-n", "300", "--retrieval-d", "32",
        "--retrieval-classes", "10", "--retrieval-reps", "1", "--no-prime", "--threads", "1"]


def test_bench_tiny_synthetic_and_retrieval(tmp_path: Path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "bench.jsonl"
    rc = bench.main(TINY + ["--methods", "mocov2,simsiam", "--no-real", "--no-loader", "--no-peer", "--out", str(out)])
    assert rc == 0
    assert torch.get_num_threads() == threads
    recs = read_lines(out)
    kinds = [r["kind"] for r in recs]
    assert kinds[0] == "env" and {"device_name", "torch", "threads", "mem_kind"} <= set(recs[0])
    steps = [r for r in recs if r["kind"] == "step"]
    assert [(r["method"], r["variant"], r["data"]) for r in steps] == [
        ("mocov2", "base", "synthetic"), ("simsiam", "base", "synthetic")]
    for r in steps:
        assert STEP_KEYS <= set(r), STEP_KEYS - set(r)
        assert r["ms_per_step"] > 0 and r["images_per_s"] == pytest.approx(4 / (r["ms_per_step"] / 1e3))
        assert len(r["step_ms"]) == 1 and r["peak_mem_mb"] is not None and r["peak_mem_mb"] >= 0
        assert r["precision"] == "32-true" and r["device"] == "cpu"
    ret = next(r for r in recs if r["kind"] == "retrieval")
    assert {"n", "d", "ms_retrieval", "ms_matmul", "ratio"} <= set(ret)
    assert (ret["n"], ret["d"]) == (300, 32) and ret["ratio"] > 0
    mr = next(r for r in recs if r["kind"] == "method_ratio")  # issue 11: MoCo v2 vs SimSiam base step
    assert mr["ratio"] == pytest.approx(steps[0]["ms_per_step"] / steps[1]["ms_per_step"])
    table = capsys.readouterr().out
    assert "ms/step" in table and "mocov2" in table and "simsiam" in table and "retrieval 300x32" in table
    assert "base step, MoCo v2 / SimSiam" in table


def test_bench_real_data_and_loader_on_imagefolder(tmp_path: Path, tiny_imagefolder: Path, capsys):
    """The real-data step and the loader alone, on an 18-image ImageFolder (JSON lines on stdout)."""
    rc = bench.main(TINY + ["--methods", "mocov2", "--no-retrieval", "--workers", "0", "--loader-batches", "1",
                            "--no-pipelines", "--no-peer", "--set", "data=imagefolder",
                            "--set", f"data.root={tiny_imagefolder}"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    recs = [json.loads(x) for x in lines if x.startswith("{")]
    first_table_line = next(i for i, x in enumerate(lines) if x and not x.startswith("{"))
    assert all(not x.startswith("{") for x in lines[first_table_line:])  # JSON lines first, then the table
    real = next(r for r in recs if r["kind"] == "step" and r["data"] == "imagefolder")
    assert STEP_KEYS <= set(real) and real["workers"] == 0
    rvs = next(r for r in recs if r["kind"] == "real_vs_synthetic")
    assert rvs["ratio"] == pytest.approx(rvs["ms_real"] / rvs["ms_synthetic"])
    loaders = [r for r in recs if r["kind"] == "loader"]
    assert [r["cache"] for r in loaders] == [False, True]
    for r in loaders:
        assert r["images_per_s"] > 0 and r["views_per_s"] == pytest.approx(2 * r["images_per_s"])
        assert r["num_train"] == 18 and r["setup_s"] >= 0


def test_missing_variant_is_skipped_not_fatal(monkeypatch, tmp_path: Path):
    """A variant whose config group does not exist yet becomes a ``skip`` line."""
    monkeypatch.setitem(bench.VARIANTS, "ghost", ("+GHOST", ["synthesis=ghost_not_written_yet"]))
    a = bench.parse_args(TINY + ["--methods", "mocov2", "--variants", "ghost", "--no-real", "--no-loader",
                                 "--no-retrieval"])
    recs = []
    bench.run(a, recs.append)
    skip = next(r for r in recs if r["kind"] == "skip")
    assert skip["variant"] == "ghost" and "ghost_not_written_yet" in skip["reason"]
    assert "skip: mocov2 ghost" in bench.format_report(recs)


def test_missing_module_counts_as_not_available():
    name = "fgssl.regularizers.syn.regularizer"
    e = ModuleNotFoundError(f"No module named '{name}'", name=name)
    assert bench._is_missing_component(e)
    assert not bench._is_missing_component(ModuleNotFoundError("x", name="numpy"))


def test_rounds_are_pooled_and_reported():
    """--rounds: the step times of every round are pooled; the table shows the ratios."""
    def run(ms, mem):
        return {"ms_per_step": statistics.median(ms), "peak_mem_mb": mem, "mem_kind": "x", "step_ms": ms,
                "compute_ms": [m - 1 for m in ms], "batch": 8, "trainable_params_m": 1.0, "compiled_backbones": 0}

    agg = bench._pool([run([10.0, 12.0], 100.0), run([30.0, 11.0], 120.0), run([13.0, 14.0], 90.0)])
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


@pytest.mark.slow
def test_bench_pipelines_alone_augment_and_peer(tmp_path: Path, tiny_imagefolder: Path):
    """Issue 12's rows: real/synthetic through both pipelines, each pipeline alone, the augmentation library
    comparison, and the lightly-built peer steps (a skip line when lightly is not installed)."""
    out = tmp_path / "bench.jsonl"
    rc = bench.main(TINY + ["--methods", "mocov2,simsiam", "--no-retrieval", "--no-loader", "--workers", "0",
                            "--loader-batches", "1", "--set", "data=imagefolder",
                            "--set", f"data.root={tiny_imagefolder}", "--out", str(out)])
    assert rc == 0
    recs = read_lines(out)
    pipes = [r for r in recs if r["kind"] == "pipeline"]
    assert [(r["method"], r["pipeline"]) for r in pipes] == [
        ("mocov2", "device"), ("mocov2", "workers"), ("simsiam", "device"), ("simsiam", "workers")]
    for r in pipes:
        assert r["ratio"] == pytest.approx(r["ms_real"] / r["ms_synthetic"])
    assert pipes[0]["symmetric"] is False and pipes[0]["held_in"] == "RAM"
    alone = [r for r in recs if r["kind"] == "pipeline_loader"]
    assert [r["pipeline"] for r in alone] == ["device", "workers"] and all(r["images_per_s"] > 0 for r in alone)
    aug = next(r for r in recs if r["kind"] == "augment")
    assert aug["fgssl_images_per_s"] > 0 and aug["kornia_augmentation_images_per_s"] > 0
    try:
        import lightly  # noqa: F401
    except ImportError:
        assert any(r["kind"] == "skip" and r.get("part") == "peer" for r in recs)
        return
    peers = [r for r in recs if r["kind"] == "peer"]
    assert [r["method"] for r in peers] == ["mocov2", "simsiam"] and peers[0]["symmetric"] is False
    assert all(r["ratio"] == pytest.approx(r["ms_fgssl"] / r["ms_lightly"]) for r in peers)


def test_bench_peer_row_for_mocov2(tmp_path: Path, capsys):
    """The lightly-built MoCo v2 step against fgssl's one-directional step (skip line without lightly)."""
    out = tmp_path / "bench.jsonl"
    assert bench.main(TINY + ["--methods", "mocov2", "--no-real", "--no-loader", "--no-retrieval",
                              "--out", str(out)]) == 0
    recs = read_lines(out)
    try:
        import lightly  # noqa: F401
    except ImportError:
        assert any(r["kind"] == "skip" and r.get("part") == "peer" for r in recs)
        return
    peer = next(r for r in recs if r["kind"] == "peer")
    assert peer["method"] == "mocov2" and peer["symmetric"] is False and peer["ms_lightly"] > 0
    assert "fgssl base step / lightly-built step" in capsys.readouterr().out

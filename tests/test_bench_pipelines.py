"""``fgssl.bench.pipelines``: both pipelines' rows (the peer of ``fgssl.bench.peer`` in the same run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgssl import bench
from test_bench_cli import TINY, read_lines


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
    assert pipes[0]["views_by"] == "main process" and pipes[1]["views_by"] is None  # --workers 0
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

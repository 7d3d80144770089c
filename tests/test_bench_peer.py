"""``fgssl.bench.peer``: the lightly-built step against fgssl's."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgssl import bench
from test_bench_cli import TINY, read_lines


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
    # what the step computes, independent of the load: one-directional MoCo v2 no longer runs the online
    # encoder on view 2 (1.25x the lightly step's FLOPs before), so both steps do the same work
    assert peer["flop_ratio"] == pytest.approx(1.0, abs=1e-4) and peer["gflop_fgssl"] > 0
    assert "fgssl base step / lightly-built step" in capsys.readouterr().out

"""``fgssl.bench.peer``: the lightly-built step against fgssl's."""

from __future__ import annotations

from pathlib import Path

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
    assert "fgssl base step / lightly-built step" in capsys.readouterr().out

"""``fgssl.bench.cli`` / ``python -m fgssl.bench``: the flags, and a tiny run whose JSON lines parse and carry their
keys. (Each part of the bench package has its own ``test_bench_<module>.py``.)"""

from __future__ import annotations

import json
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


def test_python_dash_m_runs_the_package(tmp_path: Path):
    """``python -m fgssl.bench`` (what ``make bench`` runs) is the package's ``__main__``, with the same flags."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "fgssl.bench", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--variants", "--no-pipelines", "--no-peer", "--rounds", "--loader-cache", "--retrieval-n"):
        assert flag in out.stdout


@pytest.mark.parametrize("argv,msg", [(["--variants", "nope"], "unknown variant 'nope'"),
                                      (["--methods", "byol"], "unknown method 'byol'"),
                                      (["--loader-cache", "maybe"], "--loader-cache"),
                                      (["--steps", "0"], "need --steps >= 1")])
def test_bad_flags_are_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert msg in capsys.readouterr().err

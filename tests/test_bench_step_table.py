"""``fgssl.bench.step_table``: the real-data step, a variant that cannot be built yet, literal-override variants.
(The loader-alone rows of ``fgssl.bench.loader`` come from the same run.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fgssl import bench
from fgssl.bench import compose, variants
from test_bench_cli import STEP_KEYS, TINY


def test_real_data_and_loader_on_imagefolder(tmp_path: Path, tiny_imagefolder: Path, capsys):
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
    monkeypatch.setitem(variants.VARIANTS, "ghost", ("+GHOST", ["synthesis=ghost_not_written_yet"]))
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
    assert compose.is_missing_component(e)
    assert not compose.is_missing_component(ModuleNotFoundError("x", name="numpy"))


def test_a_variant_is_hydra_overrides_so_a_new_regularizer_needs_no_edit(capsys):
    """Any ``--variants`` item with '=' is composed as Hydra overrides joined by '+': it runs through the same
    config tree and factory as training, labelled by itself; no table entry is needed."""
    a = bench.parse_args(TINY + ["--methods", "mocov2", "--variants", "base,rationale=lcr+rationale.weight=0.5",
                                 "--no-real", "--no-loader", "--no-retrieval", "--no-peer"])
    recs = []
    bench.run(a, recs.append)
    steps = {r["variant"]: r for r in recs if r["kind"] == "step"}
    lcr = steps["rationale=lcr+rationale.weight=0.5"]
    assert lcr["overrides"] == ["rationale=lcr", "rationale.weight=0.5"] and lcr["time_ratio"] > 0
    assert lcr["trainable_params_m"] > steps["base"]["trainable_params_m"], "LCR's branch was attached"

"""``python -m fgssl.results DIR`` on a hand-made multirun directory."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from fgssl import results


def make_job(root: Path, num: int, overrides, metrics=None, seed=None, broken: str = "") -> Path:
    dirname = ",".join(o for o in overrides if not o.startswith("seed=")) or "job"
    d = root / f"{num}_{dirname}"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if seed is not None:
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "method": {"name": "x"}}))
    if broken == "truncated":
        (d / "metrics.json").write_text('{"test/retrieval_map": 1')
    elif metrics is not None:
        payload = dict(metrics, run_dir=str(d), epochs=2, steps=10)
        (d / "metrics.json").write_text(json.dumps(payload))
        (d / "wandb").mkdir()  # a job's sub-folders are not jobs
    return d


MAP = {  # (method, alpha, seed) -> mAP
    ("mocov2", "0.0", 0): 10.0, ("mocov2", "0.0", 1): 12.0, ("mocov2", "0.0", 2): 14.0,
    ("mocov2", "0.1", 0): 20.0, ("mocov2", "0.1", 1): 21.0,
    ("simsiam", "0.0", 0): 5.0,
}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    root.mkdir(parents=True)
    n = 0
    for (m, a, s), v in MAP.items():
        ov = [f"method={m}", "debug=smoke", f"synthesis.alpha={a}", f"seed={s}"]
        make_job(root, n, ov, {"test/retrieval_map": v, "test/retrieval_rank1": 2 * v, "test/knn_top1": v + 1},
                 seed=s)
        n += 1
    # a failed job (no metrics.json) and a truncated metrics.json
    make_job(root, n, ["method=simsiam", "debug=smoke", "synthesis.alpha=0.0", "seed=1"], None, seed=1)
    make_job(root, n + 1, ["method=simsiam", "debug=smoke", "synthesis.alpha=0.0", "seed=2"], seed=2,
             broken="truncated")
    # Hydra's sweep record: a point (simsiam, alpha 0.1) never got a job directory
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": [
        "method=mocov2,simsiam", "debug=smoke", "synthesis.alpha=0.0,0.1", "seed=0,1,2"]}}}))
    return root


def test_grouping_means_and_stds(sweep: Path):
    res = results.build_tables(sweep)
    groups = {g.key: g for g in res["groups"]}
    assert len(groups) == 3
    g = groups[("debug=smoke", "method=mocov2", "synthesis.alpha=0.0")]
    assert sorted(g.seeds) == [0, 1, 2]
    vals = [j.metrics["test/retrieval_map"] for j in g.jobs]
    assert results.mean_std(vals) == pytest.approx((12.0, statistics.stdev([10.0, 12.0, 14.0])))
    assert res["metrics"][:3] == ["test/retrieval_rank1", "test/retrieval_map", "test/knn_top1"]
    assert res["metrics"][-2:] == ["epochs", "steps"]
    assert "run_dir" not in res["metrics"]
    assert set(res["varying"]) == {"method", "synthesis.alpha"}

    md = res["markdown"]
    assert "Common overrides: `debug=smoke`" in md
    row = next(line for line in md.splitlines() if line.startswith("| method=mocov2, synthesis.alpha=0.0 |"))
    assert "| 3 | 0,1,2 |" in row and "12.00 ± 2.00" in row and "24.00 ± 4.00" in row
    row = next(line for line in md.splitlines() if line.startswith("| method=mocov2, synthesis.alpha=0.1 |"))
    assert "20.50 ± 0.71" in row
    row = next(line for line in md.splitlines() if line.startswith("| method=simsiam, synthesis.alpha=0.0 |"))
    assert "| 1 | 0 |" in row and "| 5.00 |" in row  # one seed: no std


def test_failed_and_missing_jobs_are_listed(sweep: Path):
    res = results.build_tables(sweep)
    assert len(res["failed"]) == 2
    reasons = " ".join(j.error for j in res["failed"])
    assert "no metrics.json" in reasons and "unreadable metrics.json" in reasons
    # 2 methods x 2 alphas x 3 seeds = 12 sweep points; 8 job dirs exist
    assert sorted(res["missing"]) == sorted([
        "method=mocov2 debug=smoke synthesis.alpha=0.1 seed=2",
        *(f"method=simsiam debug=smoke synthesis.alpha=0.1 seed={s}" for s in range(3)),
    ])
    assert "## Missing or failed jobs (6)" in res["markdown"]


def test_cli_writes_markdown_and_csv(sweep: Path, capsys):
    assert results.main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    md = (sweep / "results.md").read_text()
    assert md in printed
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    r = next(r for r in rows if r["method"] == "mocov2" and r["synthesis.alpha"] == "0.1")
    assert r["n"] == "2" and r["seeds"] == "0 1"
    assert float(r["test/retrieval_map_mean"]) == pytest.approx(20.5)
    assert float(r["test/retrieval_map_std"]) == pytest.approx(statistics.stdev([20.0, 21.0]))
    assert float(r["test/retrieval_rank1_mean"]) == pytest.approx(41.0)
    s = next(r for r in rows if r["method"] == "simsiam")
    assert s["test/retrieval_map_std"] == ""  # one seed


def test_ignore_and_metric_filter(sweep: Path):
    res = results.build_tables(sweep, ignore=["seed", "synthesis.alpha"], patterns=["test/retrieval_*"])
    assert len(res["groups"]) == 2
    assert res["metrics"] == ["test/retrieval_rank1", "test/retrieval_map"]
    g = next(g for g in res["groups"] if "method=mocov2" in g.key)
    assert len(g.jobs) == 5


def test_bad_directory_is_one_line_error(tmp_path: Path, capsys):
    assert results.main([str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert results.main([str(tmp_path)]) == 2
    assert "no job directory" in capsys.readouterr().err


def test_later_evaluations_are_rows_of_their_own_paired_by_seed(tmp_path, capsys):
    """--evals NAME: each job's metrics_eval_NAME.json becomes a row labelled eval=NAME, paired by seed with
    the baseline like a configuration; jobs without the file add nothing; an unreadable one is listed."""
    from fgssl import results

    for seed, (base, lcr, gap) in enumerate([(10.0, 12.0, 11.0), (11.0, 14.0, 11.5), (12.0, 13.0, 12.5)]):
        make_job(tmp_path, 2 * seed, ["rationale=none", f"seed={seed}"], {"test/knn_top1": base}, seed=seed)
        d = make_job(tmp_path, 2 * seed + 1, ["rationale=lcr", f"seed={seed}"], {"test/knn_top1": lcr}, seed=seed)
        if seed < 2:
            (d / "metrics_eval_last_feature-gap.json").write_text(json.dumps({"test/knn_top1": gap, "ckpt": "x"}))
    assert results.main([str(tmp_path), "--evals", "last_feature-gap", "--baseline", "rationale=none",
                         "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| rationale=lcr, eval=last_feature-gap | 2 | 0,1 | 11.25 ± 0.35 |" in out
    assert "| rationale=lcr | 3 | 0,1,2 | 13.00 ± 1.00 |" in out
    assert "| rationale=lcr, eval=last_feature-gap | 2 | +0.75 [-2.43, +3.93] |" in out
    (tmp_path / "5_rationale=lcr" / "metrics_eval_last_feature-gap.json").write_text("{oops")
    assert results.main([str(tmp_path), "--evals", "last_feature-gap", "--no-write"]) == 0
    assert "metrics_eval_last_feature-gap.json:" in capsys.readouterr().out

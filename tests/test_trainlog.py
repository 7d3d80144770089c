"""``python -m fgssl.trainlog``: epoch means of the training logs, the diagnosis tables of docs/evidence.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from fgssl import trainlog

HEADER = "epoch,step,train/L_C,train/L_R,test/knn_top1\n"


def _log(run: Path, rows: str) -> Path:
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "metrics.csv").write_text(HEADER + rows)
    (run / "metrics.json").write_text('{"test/knn_top1": 1.0}')
    return run


def test_each_epoch_counts_once_in_a_block_however_many_steps_it_logged(tmp_path, capsys):
    # epoch 0 logs three steps (mean 2), epoch 1 one step (4): the block 0-1 is (2 + 4) / 2 = 3, not 10 / 4
    _log(tmp_path / "sweep" / "a_seed_0", "0,1,1.0,,\n0,2,2.0,0.5,\n0,3,3.0,,\n1,4,4.0,0.7,\n1,4,,,9.0\n2,5,8.0,,\n")
    means = trainlog.read_log(tmp_path / "sweep" / "a_seed_0" / "csv" / "metrics.csv")
    assert means["train/L_C"] == {0: 2.0, 1: 4.0, 2: 8.0}
    assert trainlog.block_mean(means["train/L_C"], 0, 1) == pytest.approx(3.0)
    assert trainlog.block_mean(means["train/L_R"], 2, 4) is None

    assert trainlog.main([str(tmp_path / "sweep"), "--every", "2"]) == 0
    out = capsys.readouterr().out
    assert "| epochs | train/L_C | train/L_R |" in out  # default keys: train/* only, not test/*
    assert "| 0–1 | 3.000 | 0.600 |" in out
    assert "| 2–2 | 8.000 | – |" in out


def test_one_row_per_run_over_an_epoch_range_and_only_filters(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _log(sweep / "base_seed_0", "0,1,6.0,,\n1,2,5.0,,\n2,3,4.0,,\n")
    _log(sweep / "base_seed_1", "0,1,7.0,,\n1,2,6.0,,\n2,3,2.0,,\n")
    assert trainlog.main([str(sweep), "--epochs", "1-2", "--keys", "train/L_C"]) == 0
    out = capsys.readouterr().out
    assert "means over epochs 1–2" in out
    assert "| base_seed_0 | 4.500 |" in out and "| base_seed_1 | 4.000 |" in out
    assert trainlog.main([str(sweep), "--epochs", "2", "--only", "seed_1", "--keys", "train/L_C"]) == 0
    out = capsys.readouterr().out
    assert "| base_seed_1 | 2.000 |" in out and "base_seed_0" not in out


@pytest.mark.parametrize("args, names", [
    (["{missing}"], "is not a directory"),
    (["{empty}"], "no training log (csv/metrics.csv"),
    (["{sweep}", "--keys", "train/L_X"], "--keys train/L_X: not in the training logs; logged keys: train/L_C"),
    (["{sweep}", "--epochs", "9-3"], "--epochs '9-3': need 0 <= A <= B"),
    (["{sweep}", "--epochs", "late"], "--epochs 'late' must be A-B"),
    (["{sweep}", "--every", "0"], "--every 0 must be >= 1"),
])
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, args, names):
    _log(tmp_path / "sweep" / "r", "0,1,1.0,,\n")
    (tmp_path / "empty").mkdir()
    paths = {k: str(tmp_path / k) for k in ("missing", "empty", "sweep")}
    assert trainlog.main([a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fgssl error: ") and names in err[0]


def test_reproduces_the_diagnosis_numbers_docs_evidence_quotes():
    # docs/evidence.md, "Diagnosing SYN and LCR": seed 0's +SYN run, epochs 25-29: L_R 0.51, L_Cp 4.16, shift 1.07
    record = ROOT / "docs" / "evidence" / "cpu_evidence" / "mocov2"
    runs = dict(trainlog.find_logs([record], only="synthesis_syn_rationale_none_seed_0"))
    means = runs["synthesis_syn_rationale_none_seed_0"]
    got = {k: trainlog.block_mean(means[k], 25, 29) for k in ("train/L_R", "train/L_Cp", "train/syn_shift")}
    assert {k: round(v, 2) for k, v in got.items()} == {"train/L_R": 0.51, "train/L_Cp": 4.16, "train/syn_shift": 1.07}


def test_per_run_tables_show_only_the_keys_that_run_logged(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _log(sweep / "base", "0,1,6.0,,\n")
    _log(sweep / "syn", "0,1,6.0,0.9,\n")
    assert trainlog.main([str(sweep)]) == 0
    base, syn = capsys.readouterr().out.split("syn\n")  # the second table starts with its label
    assert "| epochs | train/L_C |\n" in base and "train/L_R" not in base
    assert "| epochs | train/L_C | train/L_R |" in syn

"""Regularizers are plug-ins: a toy one defined entirely inside tests/ (tests/plugins/fgssl_toy_normpen: one
registration and its own config, no edit to src/) composes, builds and trains from the command line next to
``synthesis=syn`` and ``rationale=lcr``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import ROOT

PLUGIN_DIR = Path(__file__).resolve().parent / "plugins"


def _install_entry_point(site: Path) -> None:
    """What ``pip install`` of a package declaring ``[project.entry-points."fgssl.plugins"]`` leaves behind."""
    info = site / "fgssl_toy_normpen-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fgssl-toy-normpen\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fgssl.plugins]\nnormpen = fgssl_toy_normpen\n")


def test_toy_regularizer_registers_composes_and_adds_its_loss(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    import importlib

    import fgssl_toy_normpen

    importlib.reload(fgssl_toy_normpen)  # its one registration line runs here (again, if another test imported it)

    from conftest import compose_cfg
    from fgssl.config import REGULARIZERS
    from fgssl.factory import build_model, labels
    from fgssl.methods.base import StepState

    try:
        from fgssl.config import register_configs

        register_configs()
        cfg = compose_cfg(["normpen=on", "normpen.weight=0.5", "method.queue_size=64"])
        assert cfg.normpen.name == "on" and cfg.normpen.weight == 0.5
        assert labels(cfg) == ["NORM"]
        method = build_model(cfg)
        (reg,) = method.regularizers
        z = torch.full((4, method.feat_dim), 0.1)
        state = StepState((None, None), (None, None), (z, z), torch.zeros(()), None, 0, 0)
        weight, value = reg.loss_terms(method, state)["L_norm"]
        expected = (z.norm(dim=1) - 1.0).square().mean()
        assert weight == 0.5 and torch.allclose(value, expected)
        assert compose_cfg([]).normpen.name == "none"  # off unless chosen, with no edit to conf/config.yaml
    finally:
        REGULARIZERS.pop("normpen", None)
        register_configs()


def test_toy_regularizer_trains_from_the_command_line_with_syn_and_lcr(tmp_path):
    site = tmp_path / "site"
    _install_entry_point(site)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(PLUGIN_DIR), str(ROOT / "src")]),
               OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", "debug=smoke", "synthesis=syn", "rationale=lcr", "normpen=on",
           "normpen.weight=0.5", "logger=csv", f"hydra.run.dir={run}"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["test/retrieval_map"] >= 0
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    for term in ("train/L_norm", "train/L_R", "train/L_fit"):
        values = [float(row[term]) for row in rows if row.get(term)]
        assert values and all(v >= 0 for v in values), term
    assert "normpen:" in (run / "checkpoints" / "config.yaml").read_text()


def test_unknown_plugin_option_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "train.py", "synthesis=bogus"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "synthesis" in r.stderr and "bogus" in r.stderr

"""The run directory's home (fgssl.layout, fgssl.rundir), the one reader of run folders (fgssl.runs) and
the one composer of the config tree (fgssl.compose)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import CONF, compose_cfg, make_imagefolder
from fgssl.compose import compose
from fgssl.errors import FgsslError
from fgssl.layout import RunLayout
from fgssl.rundir import load_trained, save_config


def _fake_run(tmp_path: Path, *overrides: str):
    """A run directory as train.py leaves it (config + last.ckpt of a freshly built model), without training."""
    from fgssl.data.datamodule import FGVRDataModule
    from fgssl.factory import build_model

    data = make_imagefolder(tmp_path / "ds")
    run = RunLayout(tmp_path / "run")
    cfg = compose_cfg(["data=imagefolder", f"data.root={data}", "debug=smoke", "data.num_workers=0", *overrides],
                      run.root)
    dm = FGVRDataModule(cfg.data, cfg.eval, None)
    dm.setup()
    model = build_model(cfg, dm.num_train, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # weights no fresh build has
    save_config(cfg, run.config)
    torch.save({"state_dict": model.state_dict(), "epoch": 0}, run.last)
    return run, model


@pytest.mark.parametrize("method", ["mocov2", "simsiam"])
def test_load_trained_rebuilds_the_checkpoint_exactly(tmp_path, method):
    run, model = _fake_run(tmp_path, f"method={method}")
    trained = load_trained(run.last, {"data.num_workers": 0, "eval.max_images": 8})
    assert trained.ckpt == run.last.resolve() and trained.run.root == run.root.resolve()
    assert trained.cfg.method.name == method and trained.cfg.eval.max_images == 8  # the override applied
    assert not trained.model.training and trained.data.num_train > 0
    want, got = model.state_dict(), trained.model.state_dict()
    assert set(want) == set(got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_load_trained_errors_are_one_line_naming_the_file(tmp_path):
    run, _ = _fake_run(tmp_path)
    state = torch.load(run.last, weights_only=True)
    state["state_dict"]["extra.weight"] = torch.zeros(1)
    bad = run.checkpoints / "extra.ckpt"
    torch.save(state, bad)
    with pytest.raises(FgsslError, match=r"does not match the model built from its config.*extra.weight"):
        load_trained(bad)
    loose = tmp_path / "loose" / "x.ckpt"
    loose.parent.mkdir()
    loose.write_bytes(run.last.read_bytes())
    with pytest.raises(FgsslError, match=r"no config.yaml next to checkpoint .*x.ckpt"):
        load_trained(loose)
    run.config.write_text(run.config.read_text() + "not_a_key: 1\n")
    with pytest.raises(FgsslError, match=r"config.yaml does not fit this version of fgssl's config.*not_a_key"):
        load_trained(run.last)


def test_layout_paths():
    run = RunLayout.of_checkpoint("/r/checkpoints/last.ckpt")
    assert run.root == Path("/r") and run.last == Path("/r/checkpoints/last.ckpt")
    assert RunLayout.of_checkpoint("/r/checkpoints.previous-12/last.ckpt").root == Path("/r")
    assert RunLayout.of_checkpoint("/elsewhere/x.ckpt").root == Path("/elsewhere")
    assert run.config == Path("/r/checkpoints/config.yaml") and run.metrics == Path("/r/metrics.json")
    assert run.curve.name == "curve.json" and run.bad_images.name == "bad_images.txt"
    assert run.eval_metrics("last").name == "metrics_eval_last.json"


def test_every_writer_names_its_file_from_the_layout(tmp_path):
    """The files the lower floors write are the ones the layout names (one list of names)."""
    from fgssl import layout
    from fgssl.callbacks.curve import CURVE_FILE
    from fgssl.data.datamodule import FGVRDataModule
    from fgssl.eval.suite import write_metrics
    from fgssl.lifecycle import ERROR_FILE, LOCK_FILE

    assert (CURVE_FILE, ERROR_FILE, LOCK_FILE) == (layout.CURVE, layout.ERROR, layout.LOCK)
    assert write_metrics({"a": 1.0}, tmp_path) == RunLayout(tmp_path).metrics
    cfg = compose_cfg(["debug=smoke"])
    assert FGVRDataModule(cfg.data, cfg.eval, str(tmp_path)).bad_log == RunLayout(tmp_path).bad_images


def _job(root: Path, name: str, overrides, metrics=None, config=None, error=None) -> Path:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "wandb").mkdir()
        (d / "wandb" / "metrics.json").write_text("{}")  # a job's own sub-folder is not a job
    if config is not None:
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "config.yaml").write_text(config)
    if error is not None:
        (d / "error.txt").write_text(error)
    return d


def test_runs_reads_jobs_for_results_and_figures(tmp_path):
    from fgssl.runs import read_jobs

    _job(tmp_path, "1_b", ["seed=1"], {"test/knn_top1": 2.0, "run_dir": "x"}, "seed: 1\nmethod:\n  name: simsiam\n")
    _job(tmp_path, "0_a", ["seed=0"], {"test/knn_top1": 1.0})
    _job(tmp_path, "2_c", ["seed=2"], {"test/knn_top1": 3.0}, error="fgssl error: bad\n")
    _job(tmp_path, "10_d", ["seed=3"])
    jobs = read_jobs(tmp_path)
    assert [j.path.name for j in jobs] == ["0_a", "1_b", "2_c", "10_d"]
    a, b, c, d = jobs
    assert a.metrics == {"test/knn_top1": 1.0} and a.seed == "0" and a.config is None and a.error is None
    assert b.config["method"]["name"] == "simsiam" and b.seed == 1 and b.metrics == {"test/knn_top1": 2.0}
    assert c.error == "failed: fgssl error: bad (see error.txt)" and not c.metrics
    assert d.error.startswith("no metrics.json")
    from fgssl.sweep import sweep_status  # the end-of-sweep summary reads the folder the same way

    finished, failed = sweep_status(tmp_path)
    assert [p.name for p in finished] == ["0_a", "1_b", "10_d"] and failed == [(c.path, "fgssl error: bad")]


def test_compose_is_train_py_s_config(tmp_path):
    cfg = compose(["method=simsiam", "debug=smoke"], out_dir=tmp_path)
    assert cfg.method.name == "simsiam" and cfg.out_dir == str(tmp_path)
    assert compose([], CONF) == compose_cfg([])
    with pytest.raises(FgsslError, match="no config.yaml in"):
        compose([], tmp_path)
    with pytest.raises(Exception, match="rot"):
        compose(["data.rot=1"])
    with pytest.raises(FgsslError, match=r"eval.every_n_epochs=-1 must be >= 0"):  # values checked, as train.py does
        compose(["eval.every_n_epochs=-1"])
    assert compose(["eval.every_n_epochs=-1"], check=False).eval.every_n_epochs == -1
    assert "hydra" in compose([], return_hydra_config=True)


def test_a_saved_config_reads_back_without_setup(tmp_path):
    """A notebook that imports only fgssl.rundir (no train.py, no compose, so no plugins.setup()) reads a run
    config holding the regularizers' keys: the first attempt said "Key 'rationale' not in 'Config'"."""
    import subprocess
    import sys

    cfg = compose_cfg(["synthesis=syn", "rationale=lcr", "debug=smoke"], tmp_path / "run")
    save_config(cfg, tmp_path / "config.yaml")
    code = ("from fgssl.rundir import read_run_config; import sys; "
            "c = read_run_config(__import__('pathlib').Path(sys.argv[1])); print(c.synthesis.name, c.rationale.name)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "config.yaml")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.split() == ["syn", "lcr"]

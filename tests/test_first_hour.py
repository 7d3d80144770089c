"""Issue 18, the first hour of a new user: bad input fails at once and clearly, before anything heavy is
imported; evaluate.py and figures.py write beside their checkpoint and nowhere else; metrics files are named
by the evaluation that wrote them; smoke runs every attached component."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fgssl.run
from conftest import ROOT, compose_cfg, make_imagefolder
from fixtures import one_torch_thread


@pytest.fixture(scope="module")
def no_heavy_imports(tmp_path_factory) -> Path:
    """A folder that shadows torch and Lightning: importing either ends the process with a marker line."""
    d = tmp_path_factory.mktemp("shadow")
    for mod in ("torch", "pytorch_lightning"):
        (d / f"{mod}.py").write_text(f"raise SystemExit('HEAVY IMPORT: {mod}')\n")
    return d


def _env(*first: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true")
    env["PYTHONPATH"] = os.pathsep.join([*map(str, first), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _run(script: str, args, cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def _fake_ckpt(tmp: Path) -> Path:
    """A JPEG passed as a checkpoint, with a real config.yaml beside it (torch would then offer its advice)."""
    from conftest import write_image

    run = tmp / "run" / "checkpoints"
    photo = write_image(run / "photo.jpg")
    (run / "config.yaml").write_text((ROOT / "conf" / "logger" / "csv.yaml").read_text())
    return photo


CASES = {  # name -> (script, args (with {tmp}), words the one error line names)
    "typo": ("train.py", ["data.rot=1"], ["unknown config key data.rot", "did you mean data.root?"]),
    "typo_plus": ("train.py", ["+data.rot=1"], ["unknown config key data.rot", "did you mean data.root?"]),
    "typo_top": ("train.py", ["++sed=1"], ["unknown config key sed", "did you mean seed?"]),
    "missing_root": ("train.py", ["data=imagefolder", "data.root={tmp}/nope"], ["{tmp}/nope", "Expected layout"]),
    "batch": ("train.py", ["data.batch_size=5000"], ["data.batch_size=5000", "2190 training images"]),
    "weights": ("train.py", ["backbone.weights={tmp}/r50.pth"], ["backbone.weights={tmp}/r50.pth", "not found"]),
    "jpeg_ckpt": ("evaluate.py", ["ckpt={tmp}/run/checkpoints/photo.jpg"],
                  ["ckpt={tmp}/run/checkpoints/photo.jpg", "not a fgssl checkpoint"]),
    "figures_ckpt": ("figures.py", ["ckpt={tmp}/run/checkpoints/photo.jpg"],
                     ["ckpt={tmp}/run/checkpoints/photo.jpg", "not a fgssl checkpoint"]),
    "sweep_dir": ("figures.py", ["figures.sweep_dir={tmp}/nope"], ["figures.sweep_dir not found", "{tmp}/nope"]),
}


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory, no_heavy_imports):
    tmp = tmp_path_factory.mktemp("errs")
    _fake_ckpt(tmp)
    env = _env(no_heavy_imports)
    procs = {}
    for name, (script, args, _) in CASES.items():
        cwd = tmp / f"cwd_{name}"
        cwd.mkdir()
        argv = [a.format(tmp=tmp) for a in args]
        if script == "train.py":
            argv.append(f"hydra.run.dir={tmp / f'out_{name}'}")
        procs[name] = (subprocess.Popen([sys.executable, str(ROOT / script), *argv], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, cwd=cwd, env=env), cwd)
    results = {}
    for name, (p, cwd) in procs.items():
        out, err = p.communicate(timeout=120)
        results[name] = (p.returncode, out, err, cwd)
    return tmp, results


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_before_anything_heavy(name, error_runs):
    """Items 1, 10, 12: one ``fgssl error:`` line naming the key or file, exit 2, before torch or Lightning is
    imported (the shadow modules would end the process instead); an unknown key is refused with or
    without ``+``; a JPEG as ``ckpt=`` is "not a fgssl checkpoint", never torch's weights_only advice."""
    tmp, results = error_runs
    rc, out, err, cwd = results[name]
    both = out + err
    assert "HEAVY IMPORT" not in both, both[-2000:]
    assert rc == 2, both[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("fgssl error: ")]
    assert len(lines) == 1 and "Traceback" not in both, both[-2000:]
    for word in CASES[name][2]:
        assert word.format(tmp=tmp) in lines[0], (word, lines[0])
    assert "weights_only" not in both and "To append to your config" not in both
    if CASES[name][0] != "train.py":
        assert not list(cwd.iterdir()), "evaluate.py / figures.py left a folder in the working directory"


def test_help_describes_fgssl(tmp_path, no_heavy_imports):
    """Item 13: ``python train.py --help`` starts with what fgssl is and its three commands."""
    r = _run("train.py", ["--help"], tmp_path, _env(no_heavy_imports))
    assert r.returncode == 0, r.stderr[-2000:]
    head = r.stdout.split("== Configuration groups ==")[0]
    assert head.startswith("fgssl: self-supervised learning")
    for cmd in ("python train.py", "python evaluate.py ckpt=", "python figures.py ckpt=", "debug=smoke"):
        assert cmd in head, cmd


# ---------------------------------------------------------------------- where evaluations write
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    gen = one_torch_thread()
    next(gen)
    base = tmp_path_factory.mktemp("first_hour")
    data = make_imagefolder(base / "data", classes=3, per_class=11)
    out = base / "run"
    cfg = compose_cfg(["data=imagefolder", f"data.root={data}", "debug=smoke", "synthesis=syn", "rationale=lcr",
                       "trainer.enable_progress_bar=false", "rationale.log_images_every_n_epochs=0",
                       "synthesis.log_images_every_n_epochs=0"], out)
    fgssl.run.train(cfg)
    yield out, data
    next(gen, None)


def test_smoke_runs_every_attached_component(smoke_run):
    """Item 8: at smoke size layer4 is at least 2x2 (LCR's fit is not 0) and SYN builds pairs (L_Cp > 0)."""
    out, _ = smoke_run
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    for key in ("train/L_fit", "train/L_Cp", "train/L_R"):
        vals = [float(r[key]) for r in rows if r.get(key)]
        assert len(vals) == 2 and all(v > 0 for v in vals), (key, vals)


@pytest.mark.slow  # four entry-point processes; the default suite checks the same rules more cheaply
def test_evaluate_and_figures_write_beside_the_checkpoint_only(smoke_run, tmp_path):
    """Items 4-7: no Hydra folder in the working directory, metrics named by the evaluation (a second, different
    evaluation does not overwrite the first), and no wandb run for a run trained with CSV."""
    out, data = smoke_run
    last = out / "checkpoints" / "last.ckpt"
    env = _env()
    before = {p for p in out.rglob("*")}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cmds = {
        "eval": ("evaluate.py", [f"ckpt={last}", "debug=smoke", "trainer.enable_progress_bar=false"]),
        "eval_gap": ("evaluate.py", [f"ckpt={last}", "debug=smoke", "eval.feature=gap",
                                     "trainer.enable_progress_bar=false"]),
        "figures": ("figures.py", [f"ckpt={last}", "figures.num_images=3"]),  # default logger=wandb
        "random": ("evaluate.py", ["ckpt=random", "data=imagefolder", f"data.root={data}", "debug=smoke",
                                   "trainer.enable_progress_bar=false"]),
    }
    procs = {k: subprocess.Popen([sys.executable, str(ROOT / s), *a], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=cwd, env=env) for k, (s, a) in cmds.items()}
    res = {k: (p.communicate(timeout=600), p.returncode) for k, p in procs.items()}
    for k, ((o, e), rc) in res.items():
        assert rc == 0, (k, o[-2000:], e[-2000:])
    # ckpt=random has no checkpoint: its metrics go to outputs/<name>/random, and nothing else is written
    assert sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.is_file()) == [
        "outputs/mocov2-imagefolder/random/metrics_eval_random_linear_max_iter-50_max_images-64.json"]
    new = sorted(str(p.relative_to(out)) for p in set(out.rglob("*")) - before if p.is_file())
    assert new == ["figures/gradcam.png", "figures/syn_pairs.png", "figures/variance.png",
                   "metrics_eval_last_feature-gap_linear_max_iter-50_max_images-64.json",
                   "metrics_eval_last_linear_max_iter-50_max_images-64.json"], new
    auto = json.loads((out / new[-1]).read_text())
    gap = json.loads((out / new[-2]).read_text())
    assert (auto["eval"]["feature"], gap["eval"]["feature"]) == ("auto", "gap")
    assert f"metrics written to {out / new[-1]}" in res["eval"][0][0]
    assert not (out / "wandb").exists() and not list(out.rglob("wandb")), "figures.py started a wandb run"


def test_smoke_says_it_logs_to_csv(tmp_path):
    """Item 13: ``debug=smoke`` switches the logger to CSV, and the start-up line says so."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["debug=smoke"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert "debug=smoke logs to CSV; add logger=wandb" in fgssl.run.logger_note(cfg)
    finally:
        HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()

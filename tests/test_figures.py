"""`make figures` on smoke checkpoints writes every paper figure (issue 6)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from PIL import Image

import fgssl.run
from conftest import ROOT, compose_cfg, make_imagefolder
from fgssl.errors import FgsslError
from fgssl.plots import collect_sweep
from fixtures import one_torch_thread

RUNS = {  # name -> overrides; "sweep" runs are what an alpha sweep directory holds
    "base": ["synthesis=none"],
    "alpha": ["synthesis=syn", "synthesis.nu=0", "synthesis.alpha=0.1"],
    "full": ["synthesis=syn", "synthesis.alpha=0.1"],
    "lcr": ["rationale=lcr"],
}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    gen = one_torch_thread()
    next(gen)
    base = tmp_path_factory.mktemp("figs")
    data = make_imagefolder(base / "data", classes=3, per_class=11)  # 33 images: two batches of 16
    sweep = base / "sweep"
    ckpts = {}
    for name, extra in RUNS.items():
        out = (sweep if name != "lcr" else base) / name
        cfg = compose_cfg(["method=mocov2", "data=imagefolder", f"data.root={data}", "debug=smoke",
                           "trainer.enable_progress_bar=false", *extra], out)
        fgssl.run.train(cfg)
        ckpts[name] = out / "checkpoints" / "last.ckpt"
    yield ckpts, sweep, base
    next(gen, None)
    shutil.rmtree(base, ignore_errors=True)  # four checkpoints: free the disk once the module is done


def test_make_figures_writes_every_figure(smoke_runs, tmp_path):
    ckpts, sweep, _ = smoke_runs
    out = tmp_path / "figs"
    args = (f"ckpt={ckpts['base']} 'figures.compare=[{ckpts['full']},{ckpts['lcr']}]' "
            f"figures.sweep_dir={sweep} figures.out_dir={out} figures.num_images=4 logger=none")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # `-o install`: the suite already runs inside the installed environment
    cmd = ["make", "-s", "-C", str(ROOT), "-o", "install", "figures", f"VENV={sys.prefix}", f"ARGS={args}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sizes = {}
    for name in ("gradcam", "syn_pairs", "variance", "alpha_sweep"):
        png = out / f"{name}.png"
        assert f"wrote {png}" in r.stdout
        with Image.open(png) as im:
            sizes[name] = im.size
            assert im.size[0] > 200 and im.size[1] > 150, (name, im.size)
            assert len(set(im.convert("L").getdata())) > 10, f"{name}.png is blank"
    # Grad-CAM: one row per checkpoint (base, +SYN, +LCR) -> taller than a single-model figure
    single, cwd = tmp_path / "single", tmp_path / "cwd"
    cwd.mkdir()
    r1 = subprocess.run([sys.executable, str(ROOT / "figures.py"), f"ckpt={ckpts['base']}",
                         f"figures.out_dir={single}", "figures.num_images=4"],  # the default logger: wandb
                        capture_output=True, text=True, timeout=600, env=env, cwd=cwd)
    assert r1.returncode == 0, r1.stderr[-3000:]
    # no Hydra folder in the working directory, and no wandb run for a run trained with CSV (issue 18, 4, 5, 7)
    assert not list(cwd.iterdir()), list(cwd.rglob("*"))[:10]
    assert not list(ckpts["base"].parent.parent.rglob("wandb")) and not list(single.rglob("wandb"))
    with Image.open(single / "gradcam.png") as im:
        assert sizes["gradcam"][1] > im.size[1]
    assert not (single / "syn_pairs.png").exists(), "no SYN pairs without a SYN checkpoint"
    assert not (single / "alpha_sweep.png").exists()


def test_collect_sweep_groups_base_alpha_and_full(smoke_runs):
    _, sweep, _ = smoke_runs
    got = collect_sweep(str(sweep))
    for name, key, alpha in (("base", "base", 0.0), ("alpha", "alpha", 0.1), ("full", "full", 0.1)):
        want = json.loads((sweep / name / "metrics.json").read_text())["test/linear_top1"]
        assert got[key][alpha] == [pytest.approx(want)]


def test_figures_errors_name_the_problem(smoke_runs, tmp_path):
    _, _, base = smoke_runs
    with pytest.raises(FgsslError, match="sweep_dir not found"):
        collect_sweep(str(tmp_path / "missing"))
    with pytest.raises(FgsslError, match="no SYN jobs"):
        collect_sweep(str(base / "lcr"))


def test_collect_sweep_keeps_methods_apart(smoke_runs, tmp_path):
    _, sweep, _ = smoke_runs
    mixed = tmp_path / "mixed"
    shutil.copytree(sweep, mixed, ignore=shutil.ignore_patterns("*.ckpt"))
    shutil.copytree(smoke_runs[2] / "lcr", mixed / "lcr", ignore=shutil.ignore_patterns("*.ckpt"))  # not a base job
    other = mixed / "base"  # the same job, relabelled as a SimSiam job with another score
    cfg = OmegaConf.load(other / "checkpoints" / "config.yaml")
    cfg.method.name = "simsiam"
    OmegaConf.save(cfg, other / "checkpoints" / "config.yaml")
    (other / "metrics.json").write_text(json.dumps({"test/linear_top1": 123.0}))
    with pytest.raises(FgsslError, match=r"several methods \(mocov2, simsiam\).*figures.sweep_method"):
        collect_sweep(str(mixed))
    moco = collect_sweep(str(mixed), method="mocov2")
    assert "base" not in moco and set(moco) == {"alpha", "full"}
    with pytest.raises(FgsslError, match="no SYN jobs .* for method simsiam"):
        collect_sweep(str(mixed), method="simsiam")  # only its base job is there



def test_alpha_sweep_of_the_full_method_says_what_it_drew(smoke_runs, tmp_path, capsys):
    """Issue 18, item 2: a sweep without nu = 0 jobs (the README's old command kept nu = 1) draws the full-method
    jobs against alpha and says that the L_C + alpha L_R curve needs experiment=syn_alpha_sweep."""
    from fgssl.plots import fig_alpha_sweep

    _, sweep, _ = smoke_runs
    full = tmp_path / "full_only"
    for name in ("base", "full"):
        shutil.copytree(sweep / name, full / name, ignore=shutil.ignore_patterns("*.ckpt"))
    fig = fig_alpha_sweep(str(full))
    said = capsys.readouterr().out
    assert "full method (nu > 0): 1 job at alpha = 0.1" in said and "base method: 1 job" in said
    assert "No nu = 0 jobs" in said and "experiment=syn_alpha_sweep" in said
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert set(labels) == {r"full method ($\nu > 0$)", "base method"}
    fig_alpha_sweep(str(sweep))
    said = capsys.readouterr().out
    assert "L_C + alpha L_R (nu = 0): 1 job at alpha = 0.1" in said and "No nu = 0" not in said

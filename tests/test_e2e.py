"""End-to-end smoke runs: ``fgssl.run.train`` on every data type (official layouts), checkpoint,
saved config, metrics.json, and ``fgssl.run.evaluate`` reproducing the retrieval numbers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import fgssl.run
from conftest import ROOT, compose_cfg
from fgssl.eval.suite import METRIC_KEYS
from fixtures import make_dataset, one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


RETRIEVAL = ("test/retrieval_rank1", "test/retrieval_rank5", "test/retrieval_map")

RUNS = [
    ("mocov2", "cub53"),
    ("mocov2", "cub"),
    ("mocov2", "cars"),
    ("mocov2", "aircraft"),
    ("mocov2", "imagefolder"),
    ("simsiam", "cub53"),
    ("simsiam", "cars"),
]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e_data")
    # 11 train images per class: 33 images = two smoke batches of 16 (drop_last)
    sets = {k: make_dataset(k, base / k, train_per_class=11) for k in ("cub", "cars", "aircraft", "imagefolder")}
    # a zero-byte file, as found in real scraped folders: skipped (default policy), the run goes on
    (sets["imagefolder"].root / "train" / "class_0" / "zz_broken.jpg").write_bytes(b"")
    return sets


def _data_overrides(datasets, kind):
    return ["data=cub53"] if kind == "cub53" else datasets[kind].overrides()


def _read_csv(path: Path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.filterwarnings("ignore:skipping bad image")
@pytest.mark.parametrize("method,kind", RUNS)
def test_train_smoke_then_evaluate(method, kind, datasets, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = compose_cfg([f"method={method}", *_data_overrides(datasets, kind), "debug=smoke",
                       "trainer.enable_progress_bar=false"], out)
    metrics = fgssl.run.train(cfg)

    # metrics: returned, printed and written, in percent
    for k in METRIC_KEYS:
        assert k in metrics and 0.0 <= metrics[k] <= 100.0, (k, metrics.get(k))
    saved = json.loads((out / "metrics.json").read_text())
    for k in METRIC_KEYS:
        assert saved[k] == pytest.approx(metrics[k])
    captured = capsys.readouterr()
    printed = captured.out
    assert "test/retrieval_map" in printed and str(out / "metrics.json") in printed
    if kind == "imagefolder":
        broken = str(datasets[kind].root / "train" / "class_0" / "zz_broken.jpg")
        assert (out / "bad_images.txt").read_text().startswith(broken + "\t")
        assert "1 bad image(s) were skipped" in captured.err and broken in captured.err
    else:
        assert not (out / "bad_images.txt").exists()
    n_test = {"cub53": 64}.get(kind, 9)  # debug=smoke caps evaluation at 64 images
    loc_keys = {"test/loc_gradcam_pointing_game", "test/loc_gradcam_part_hit_rate"}
    if kind == "cub":  # the official CUB layout ships boxes and parts: the localisation score runs
        assert loc_keys <= set(saved) and all(0.0 <= saved[k] <= 100.0 for k in loc_keys)
    else:
        assert not loc_keys & set(saved)
    assert saved["test/num_test_images"] == n_test

    # resolved config and checkpoint next to each other
    ckdir = out / "checkpoints"
    last = ckdir / "last.ckpt"
    assert last.is_file()
    # by default one checkpoint per run (trainer.keep_every_n_epochs=0): no duplicate epochNNN.ckpt
    assert sorted(p.name for p in ckdir.iterdir()) == ["config.yaml", "last.ckpt"]
    text = (ckdir / "config.yaml").read_text()
    assert "${" not in text, "the saved config is resolved"
    run_cfg = OmegaConf.load(ckdir / "config.yaml")
    assert run_cfg.method.name == method and run_cfg.data.name == kind
    assert run_cfg.name == f"{method}-{kind}"
    if kind != "cub53":
        assert run_cfg.data.root == str(datasets[kind].root)
    if method == "mocov2":
        assert run_cfg.method.queue_size > 0
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("backbone.") for k in state)
    if method == "mocov2":
        k = int(run_cfg.method.queue_size)  # one epoch of keys by default: two steps may wrap around
        assert int(state["queue_ptr"]) == (2 * 16) % k, "two smoke steps of 16 keys were enqueued"

    # per-step logging: losses, learning rates, the collapse indicator, the online kNN
    rows = _read_csv(out / "csv" / "metrics.csv")
    cols = set(rows[0])
    assert {"train/L_C", "train/loss", "lr/backbone", "lr/projector", "val/knn_top1"} <= cols
    steps = [r for r in rows if r.get("lr/backbone")]
    assert len(steps) == 2
    base = cfg.method.lr * 16 / 256
    # per-step cosine over the 2 smoke steps (logged after each scheduler step): 0.5 then 0 of the base lr
    assert [float(r["lr/backbone"]) for r in steps] == pytest.approx([base * 0.5, 0.0], abs=1e-9)
    if method == "simsiam":
        assert [float(r["lr/predictor"]) for r in steps] == pytest.approx([base, base]), "fixed predictor lr"
        assert all(0.0 < float(r["train/collapse_std"]) < 1.0 for r in steps)

    # evaluate.py on that checkpoint reproduces the retrieval numbers
    ev_cfg = compose_cfg([f"ckpt={last}", "debug=smoke", "trainer.enable_progress_bar=false"])
    again = fgssl.run.evaluate(ev_cfg)
    for k in RETRIEVAL:
        assert again[k] == pytest.approx(metrics[k], abs=1e-6), k
    name = fgssl.rundir.eval_metrics_name(str(last), ev_cfg.eval)
    assert name == "metrics_eval_last_linear_max_iter-50_max_images-64.json", "checkpoint + non-default eval keys"
    ev_saved = json.loads((out / name).read_text())
    assert ev_saved["ckpt"] == str(last)
    assert json.loads((out / "metrics.json").read_text()) == saved, "evaluate must not overwrite training metrics"


@pytest.mark.filterwarnings("ignore:skipping bad image")
def test_evaluate_random_init(datasets, tmp_path):
    fx = datasets["imagefolder"]
    cfg = compose_cfg(["ckpt=random", *fx.overrides(), "method=simsiam", "debug=smoke",
                       "trainer.enable_progress_bar=false"], tmp_path / "rand")
    m = fgssl.run.evaluate(cfg)
    assert set(METRIC_KEYS) <= set(m)
    data = json.loads((tmp_path / "rand" / fgssl.rundir.eval_metrics_name("random", cfg.eval)).read_text())
    assert data["ckpt"] == "random" and data["test/retrieval_map"] == pytest.approx(m["test/retrieval_map"])


def test_cli_simsiam_imagefolder_wandb_offline(datasets, tmp_path):
    """The new-user command, through the real entry point, with the wandb logger offline."""
    fx = datasets["imagefolder"]
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # offline comes from the config
    env["WANDB_SILENT"] = "true"
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, str(ROOT / "train.py"), "method=simsiam", "data=imagefolder", f"data.root={fx.root}",
           "debug=smoke", "logger=wandb", f"hydra.run.dir={run}", "trainer.enable_progress_bar=false"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "config.yaml").is_file()
    runs = list((run / "wandb").glob("offline-run-*"))
    assert runs, f"no offline wandb run under {run / 'wandb'}: {list(run.rglob('*'))[:20]}"
    assert any(runs[0].rglob("*.wandb")), "the offline run holds its log file"
    assert "test/retrieval_map" in r.stdout


@pytest.mark.filterwarnings("ignore:skipping bad image")
@pytest.mark.parametrize("verify,pipeline", [(False, "device"), pytest.param(False, "workers", marks=pytest.mark.slow),
                                             pytest.param(True, "auto", marks=pytest.mark.slow)])  # True: default
def test_few_corrupt_files_among_thousands_train_to_the_end(verify, pipeline, tmp_path, capsys):
    """2,000 training images, 3 of them broken in different ways: a full epoch trains, and the end of
    the run names the broken files (found by the setup check, or when it is off while loading (workers) or
    decoding once (device pipeline), which leaves them out)."""
    from PIL import Image

    root = tmp_path / "big"
    noise = Image.effect_noise((12, 12), 64).convert("RGB")
    for split, per_class in (("train", 500), ("test", 8)):
        for c in range(4):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                noise.rotate(7 * i + 90 * c).save(d / f"{i:04d}.jpg", quality=70)
    broken = [root / "train" / "class_0" / "0007.jpg", root / "train" / "class_2" / "0123.jpg",
              root / "train" / "class_3" / "0499.jpg"]
    broken[0].write_bytes(b"")                                        # zero bytes
    broken[1].write_bytes(broken[1].read_bytes()[:40])                # truncated after the header
    broken[2].write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)   # garbage behind a JPEG magic
    out = tmp_path / "run"
    cfg = compose_cfg(["method=simsiam", "data=imagefolder", f"data.root={root}", "debug=smoke",
                       "trainer.limit_train_batches=null", "data.batch_size=250", "data.image_size=16",
                       f"data.verify_images={str(verify).lower()}", f"data.pipeline={pipeline}",
                       "eval.knn_every_n_epochs=0",
                       "trainer.enable_progress_bar=false"], out)
    metrics = fgssl.run.train(cfg)
    assert metrics and (out / "metrics.json").is_file()
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    dropped = verify or pipeline != "workers"  # the workers path replaces a bad image by the next one
    assert state["global_step"] == (7 if dropped else 8), "a whole epoch of 1,997 (or 2,000) images, batch 250"
    listed = {line.split("\t")[0] for line in (out / "bad_images.txt").read_text().splitlines()}
    err = capsys.readouterr().err
    assert f"{len(listed)} bad image(s) were skipped" in err
    for p in broken:
        assert str(p) in listed and str(p) in err, p


def test_profiler_reports_the_wait_for_data(datasets, tmp_path):
    """``trainer.profiler=simple``: Lightning's per-hook times, with the wait for the next training batch
    (how the two data pipelines were compared, docs/data_pipeline.md), written into the run dir."""
    out = tmp_path / "run"
    cfg = compose_cfg(["method=mocov2", *_data_overrides(datasets, "imagefolder"), "debug=smoke",
                       "trainer.enable_progress_bar=false", "trainer.profiler=simple"], out)
    fgssl.run.train(cfg)
    report = (out / "fit-profile.txt").read_text()
    assert "train_dataloader_next" in report and "run_training_batch" in report

"""The device pipeline (issue 12): decode-once cache, per-image parameters from per-image seeds drawn like the
workers path's torchvision transforms, batched augmentation, evaluation crops, automatic choice."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from conftest import compose_cfg
from fgssl.data import device as dp
from fgssl.data.datamodule import FGVRDataModule
from fgssl.data.sampling import sample_seed
from fgssl.data.transforms import mocov2_view
from fixtures import make_imagefolder_set, one_torch_thread

KNOBS = [dp.ViewKnobs(), dp.ViewKnobs(0.5, 0.5, 0.3, 0.6, 0.9), dp.ViewKnobs(0.2, 0.0, 1.0, 0.0, 0.0)]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


class Recorder:
    """Records the parameters torchvision's v2 transforms draw (the workers path) for one call."""

    def __init__(self, monkeypatch):
        self.rows = []
        rec = self

        def wrap(cls, name, fn):
            orig = getattr(cls, name)

            def hooked(self, *a, **k):
                out = orig(self, *a, **k)
                fn(rec.rows[-1], self, a, out)
                return out

            monkeypatch.setattr(cls, name, hooked)

        def crop(row, t, a, out):
            row.update(top=out["top"], left=out["left"], height=out["height"], width=out["width"])

        def jitter(row, t, a, out):
            row.update(jitter=1, order=out["fn_idx"].tolist(), b=out["brightness_factor"],
                       c=out["contrast_factor"], s=out["saturation_factor"], h=out["hue_factor"])

        wrap(v2.RandomResizedCrop, "make_params", crop)
        wrap(v2.ColorJitter, "make_params", jitter)
        wrap(v2.GaussianBlur, "make_params", lambda row, t, a, out: row.update(blur=1, sigma=out["sigma"][0]))
        wrap(v2.RandomGrayscale, "transform", lambda row, t, a, out: row.update(gray=1))
        wrap(v2.RandomHorizontalFlip, "transform", lambda row, t, a, out: row.update(flip=1))

    def views(self, transform, img, seed):
        """Both views of ``img`` under ``seed`` as ImageDataset draws them: one row of parameters per view."""
        torch.manual_seed(seed)
        for _ in range(2):
            self.rows.append(dict(jitter=0, gray=0, blur=0, flip=0))
            transform(img)
        return self.rows[-2:]


def _device_row(p):
    return dict(top=int(p[dp.TOP]), left=int(p[dp.LEFT]), height=int(p[dp.HEIGHT]), width=int(p[dp.WIDTH]),
                jitter=int(p[dp.JITTER]), gray=int(p[dp.GRAY]), blur=int(p[dp.BLUR]), flip=int(p[dp.FLIP]))


@pytest.mark.parametrize("knobs", KNOBS, ids=["mocov2", "knobs", "no-jitter-range"])
def test_parameters_are_the_workers_paths_draws(knobs, monkeypatch):
    """Under an image's seed the device pipeline draws exactly what torchvision's mocov2_view draws for the
    same image size: crop box (incl. the fallback for extreme aspect ratios), jitter on/off, order and
    factors, grayscale, blur and sigma, flip."""
    rec = Recorder(monkeypatch)
    view = mocov2_view(32, knobs.min_scale, knobs.jitter_strength, knobs.jitter_p, knobs.gray_p, knobs.blur_p)
    for n, (h, w) in enumerate([(40, 40), (30, 52), (60, 20), (8, 90), (90, 9)]):
        img = torch.zeros(3, h, w, dtype=torch.uint8)
        for seed in (sample_seed(0, e, n) for e in range(40)):
            tv = rec.views(view, img, seed)
            ours = dp.view_params(seed, h, w, knobs)
            for v in range(2):
                assert _device_row(ours[v]) == {k: tv[v][k] for k in _device_row(ours[v])}, (h, w, seed, v)
                if tv[v]["jitter"]:
                    assert ours[v, dp.ORDER].long().tolist() == tv[v]["order"]
                    for col, key in ((dp.BRIGHT, "b"), (dp.CONTRAST, "c"), (dp.SAT, "s"), (dp.HUE, "h")):
                        assert ours[v, col].item() == (tv[v][key] if tv[v][key] is not None
                                                       else (0.0 if key == "h" else 1.0))
                if tv[v]["blur"]:
                    assert ours[v, dp.SIGMA].item() == tv[v]["sigma"]


def test_sampled_parameter_distributions_match_the_workers_path(monkeypatch):
    """Distributions over 1,000 images x 2 views, device path against the workers path's torchvision draws
    and against MoCo v2's nominal ones: crop area and aspect, jitter ranges, probabilities."""
    rec = Recorder(monkeypatch)
    h, w = 48, 64
    view = mocov2_view(32)
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    seeds = [sample_seed(3, 1, i) for i in range(1000)]
    dev = torch.cat([dp.view_params(s, h, w) for s in seeds])
    tv = [row for s in seeds for row in rec.views(view, img, s)]

    def stats(area, log_aspect, on, b, c, s, hue, gray, blur, sigma, flip):
        return dict(area_mean=area.mean(), area_min=area.min(), area_max=area.max(),
                    aspect_min=log_aspect.min(), aspect_max=log_aspect.max(), aspect_mean=log_aspect.mean(),
                    p_jitter=on.float().mean(), b_min=b.min(), b_max=b.max(), c_min=c.min(), c_max=c.max(),
                    s_min=s.min(), s_max=s.max(), h_min=hue.min(), h_max=hue.max(), h_mean=hue.mean(),
                    p_gray=gray.float().mean(), p_blur=blur.float().mean(), sig_min=sigma.min(),
                    sig_max=sigma.max(), sig_mean=sigma.mean(), p_flip=flip.float().mean())

    on = dev[:, dp.JITTER] > 0
    bl = dev[:, dp.BLUR] > 0
    d = stats(dev[:, dp.HEIGHT] * dev[:, dp.WIDTH] / (h * w), torch.log(dev[:, dp.WIDTH] / dev[:, dp.HEIGHT]), on,
              dev[on, dp.BRIGHT], dev[on, dp.CONTRAST], dev[on, dp.SAT], dev[on, dp.HUE], dev[:, dp.GRAY] > 0, bl,
              dev[bl, dp.SIGMA], dev[:, dp.FLIP] > 0)
    t = lambda key, sel=None: torch.tensor([float(r[key]) for r in tv if sel is None or r[sel]], dtype=torch.float64)  # noqa: E731
    w_ = stats(t("height") * t("width") / (h * w), torch.log(t("width") / t("height")), t("jitter") > 0,
               t("b", "jitter"), t("c", "jitter"), t("s", "jitter"), t("h", "jitter"), t("gray") > 0, t("blur") > 0,
               t("sigma", "blur"), t("flip") > 0)
    for k in d:
        assert float(d[k]) == pytest.approx(float(w_[k]), abs=1e-9), k
    n = len(dev)
    tol = lambda p: 4 * math.sqrt(p * (1 - p) / n)  # noqa: E731 - 4 binomial standard errors
    assert d["p_jitter"] == pytest.approx(0.8, abs=tol(0.8))
    assert d["p_gray"] == pytest.approx(0.2, abs=tol(0.2))
    assert d["p_blur"] == pytest.approx(0.5, abs=tol(0.5))
    assert d["p_flip"] == pytest.approx(0.5, abs=tol(0.5))
    assert 0.19 <= d["area_min"] and d["area_max"] <= 1.0 and 0.5 < d["area_mean"] < 0.65  # rounding to pixels
    assert math.log(3 / 4) - 0.1 < d["aspect_min"] < -0.2 and 0.2 < d["aspect_max"] < math.log(4 / 3) + 0.1
    for key in ("b", "c", "s"):
        assert 0.6 <= d[f"{key}_min"] < 0.62 and 1.38 < d[f"{key}_max"] <= 1.4
    assert -0.1 <= d["h_min"] < -0.098 and 0.098 < d["h_max"] <= 0.1
    assert 0.1 <= d["sig_min"] < 0.12 and 1.98 < d["sig_max"] <= 2.0 and abs(d["sig_mean"] - 1.05) < 0.06


def _smooth_image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, 4, 5, generator=g)
    return (torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
            .clamp(0, 1)[0] * 255).round().to(torch.uint8)


@pytest.mark.parametrize("knobs", KNOBS[:2], ids=["mocov2", "knobs"])
def test_views_look_like_the_workers_paths_views(knobs):
    """Same image, same seed: the device views are the workers path's views up to resampling and uint8
    rounding (crop from an S x S cache by roi_align vs antialiased resize of the original)."""
    view = mocov2_view(32, knobs.min_scale, knobs.jitter_strength, knobs.jitter_p, knobs.gray_p, knobs.blur_p)
    h, w, side = 90, 120, 96
    imgs = [_smooth_image(h, w, s) for s in range(12)]
    cache = torch.stack([torch.nn.functional.interpolate(i[None].float(), size=(side, side), mode="bilinear",
                                                         antialias=True)[0].round().to(torch.uint8) for i in imgs])
    seeds = [sample_seed(0, 2, i) for i in range(12)]
    params = torch.stack([dp.view_params(s, h, w, knobs) for s in seeds])
    ours = dp.augment(cache, torch.tensor([[h, w]] * 12), params, 32)
    diffs = []
    for i, (img, s) in enumerate(zip(imgs, seeds)):
        torch.manual_seed(s)
        ref = torch.stack([view(img), view(img)])
        diffs.append((ours[:, i] - ref).abs().mean().item())
    assert ours.shape == (2, 12, 3, 32, 32)
    assert max(diffs) < 0.08, diffs  # normalised units (~0.02 of the [0, 1] range); unrelated views differ by ~1


def test_hue_shift_is_torchvisions_adjust_hue_per_image():
    from torchvision.transforms.v2 import functional as F

    x = torch.rand(12, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    x[0] = 0.5  # grey: no hue
    x[1, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # saturated primaries
    turns = torch.linspace(-0.5, 0.5, 12)
    ref = torch.stack([F.adjust_hue(x[i], float(turns[i])) for i in range(12)])
    torch.testing.assert_close(dp.hue_shift(x, turns), ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- datamodule
def _dm(fx, tmp_path: Path, *overrides: str, world_size: int = 1) -> FGVRDataModule:
    cfg = compose_cfg(fx.overrides() + ["debug=smoke", "data.pipeline=device", f"data.cache_dir={tmp_path / 'c'}",
                                        *overrides])
    return FGVRDataModule(cfg.data, cfg.eval, str(tmp_path / "run"), world_size)


def test_device_loader_batches_are_seeded_and_shard_like_one_process(tmp_path):
    fx = make_imagefolder_set(tmp_path / "ds")
    dm = _dm(fx, tmp_path, "data.batch_size=6", "data.image_size=24", "data.eval_batch_size=5")
    dm.setup()
    assert dm.pipeline == "device" and dm.num_train == 18
    loader = dm.train_dataloader()
    assert len(loader) == 3
    (x1, x2), y = next(iter(loader))
    assert x1.shape == x2.shape == (6, 3, 24, 24) and x1.dtype == torch.float32 and y.shape == (6,)
    assert not torch.allclose(x1, x2), "two independent views"
    (a1, a2), ya = next(iter(dm.train_dataloader()))
    assert torch.equal(a1, x1) and torch.equal(a2, x2) and torch.equal(ya, y), "the same epoch gives the same views"
    # two processes x batch 3: rank 0 and rank 1 batches, concatenated, are the one-process batch of 6
    parts = []
    for rank in range(2):
        d = _dm(fx, tmp_path, "data.batch_size=3", "data.image_size=24", world_size=2)
        d.setup()
        sampler = dp.ResumableSampler(len(d.train_set), 3, d.seed, rank, 2, 0)
        parts.append(next(iter(dp.DeviceTrainLoader(d.train_pipe, sampler))))
    assert torch.equal(torch.cat([parts[0][0][0], parts[1][0][0]]), x1), "every op is per image: bitwise equal"
    assert torch.equal(torch.cat([parts[0][0][1], parts[1][0][1]]), x2)
    assert torch.equal(torch.cat([parts[0][1], parts[1][1]]), y)
    # evaluation: fixed order, every image once, from the same cache
    mem = list(dm.memory_loader())
    assert [b[0].shape[0] for b in mem] == [5, 5, 5, 3] and mem[0][0].shape[1:] == (3, 24, 24)
    assert torch.cat([b[1] for b in mem]).tolist() == [y for _, y in fx.train]
    te = list(dm.test_loader())
    assert torch.cat([b[1] for b in te]).tolist() == [y for _, y in fx.test]
    assert torch.equal(next(iter(dm.test_loader()))[0], te[0][0])
    assert torch.allclose(dm.test_set[1][0], te[0][0][1], atol=1e-6), "item access = batch crops"
    assert len(dm.val_dataloader()) == 2


def test_views_are_drawn_in_workers_only_when_a_core_is_free(monkeypatch):
    """CPU: workers draw the views only when the model's threads leave a core to them (else they only
    oversubscribe the cores: measured slower, docs/results.md); GPU or no workers: never."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cpu = torch.device("cpu")
    monkeypatch.setattr(dp.torch, "get_num_threads", lambda: 2)
    assert not dp.views_in_workers(cpu, 2)
    monkeypatch.setattr(dp.torch, "get_num_threads", lambda: 1)
    assert dp.views_in_workers(cpu, 2) and not dp.views_in_workers(cpu, 0)
    assert not dp.views_in_workers(torch.device("cuda"), 2)


def test_cpu_workers_draw_the_same_views_as_the_main_process(tmp_path, monkeypatch):
    """CPU run with loader workers and a free core: each worker draws whole batches of views (overlapped with
    the step); they are the views the main process draws, so resume and DDP stay exact with workers too."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    fx = make_imagefolder_set(tmp_path / "ds")
    dm = _dm(fx, tmp_path, "data.batch_size=6", "data.image_size=24", "data.num_workers=2")
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.in_workers and loader.num_workers == 2
    sampler = dp.ResumableSampler(len(dm.train_set), 6, dm.seed, 0, 1, 0)
    ref = list(dp.DeviceTrainLoader(dm.train_pipe, sampler))
    got = list(loader)
    assert len(got) == len(ref) == 3
    for ((a1, a2), ya), ((b1, b2), yb) in zip(got, ref):
        torch.testing.assert_close(a1, b1, rtol=0, atol=1e-6)
        torch.testing.assert_close(a2, b2, rtol=0, atol=1e-6)
        assert torch.equal(ya, yb)


def test_decoded_cache_on_disk_is_keyed_by_files_and_side(tmp_path):
    fx = make_imagefolder_set(tmp_path / "ds")
    first = _dm(fx, tmp_path)
    first.setup()
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    # train images at S x S + the evaluation crops of the test set and of the (capped) memory set; no temp left
    assert len(files) == 3 and not any(f.endswith(".tmp") for f in files), files
    assert sum(f.startswith("evalcrops-") for f in files) == 2, files
    again = _dm(fx, tmp_path)
    again.setup()
    assert again.train_pipe.split.hit and torch.equal(again.train_pipe.host, first.train_pipe.host)
    other_side = _dm(fx, tmp_path, "data.cache_size=48")
    other_side.setup()
    assert not other_side.train_pipe.split.hit and other_side.train_pipe.side == 48
    path = Path(fx.train[2][0])  # the same name with other content of another size: a new key
    from PIL import Image

    Image.new("RGB", (33, 35), (10, 200, 30)).save(path)
    changed = _dm(fx, tmp_path)
    changed.setup()
    assert not changed.train_pipe.split.hit
    assert changed.train_pipe.sizes[2].tolist() == [35, 33]
    assert changed.train_pipe.host[2, 1].float().mean() > 150, "the new pixels, not the cached ones"


def test_automatic_choice_says_which_in_one_line(tmp_path, capsys):
    fx = make_imagefolder_set(tmp_path / "ds")
    dm = _dm(fx, tmp_path, "data.pipeline=auto")
    dm.setup()
    dm.train_dataloader()
    dm.test_loader()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "data pipeline" in ln]
    assert dm.pipeline == "device" and len(lines) == 1 and "fits data.cache_budget_gb=4" in lines[0], lines
    assert "held in RAM (cpu)" in lines[0]
    small = _dm(fx, tmp_path, "data.pipeline=auto", "data.cache_budget_gb=0.0001")
    small.setup()
    (x1, _), _ = next(iter(small.train_dataloader()))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "data pipeline" in ln]
    assert small.pipeline == "workers" and "exceeds data.cache_budget_gb=0.0001" in lines[0], lines
    assert x1.shape[-1] == small.cfg.image_size == 40  # the smoke size
    with pytest.raises(Exception, match="data.pipeline"):  # the schema's choices, checked when composed
        _dm(fx, tmp_path, "data.pipeline=gpu")


def test_main_job_and_smoke_use_the_device_pipeline():
    from fgssl.data.readers import read_split

    cfg = compose_cfg([])
    assert cfg.data.name == "cub53" and cfg.data.pipeline == "auto"
    dm = FGVRDataModule(cfg.data, cfg.eval, None)
    n = len(read_split("cub53", None, "train").samples) + len(read_split("cub53", None, "test").samples)
    assert dm._choose(n)[0] == "device"


# ---------------------------------------------------------------------- evaluation crops
def _pair(fx, tmp_path, *overrides):
    out = []
    for pipeline in ("workers", "device"):
        dm = _dm(fx, tmp_path, f"data.pipeline={pipeline}", "data.image_size=24", "data.eval_batch_size=5",
                 *overrides)
        dm.setup()
        assert dm.pipeline == pipeline
        out.append(dm)
    return out


@pytest.mark.parametrize("ram_cache", [False, True], ids=["from-disk", "data.cache"])
def test_eval_tensors_equal_the_workers_paths(tmp_path, ram_cache):
    """The device pipeline's evaluation tensors ARE the workers path's (bitwise, on the CPU): the reference
    eval transform (Resize + CenterCrop) runs once per image on the same input (the original image, or with
    data.cache the workers path's RAM copy), its uint8 output is cached, and the same ToDtype + Normalize ops
    run per batch. Old code (crops resized from the S x S cache) differed by ~0.05 on average."""
    fx = make_imagefolder_set(tmp_path / "ds")  # images of several aspect ratios
    workers, device = _pair(fx, tmp_path, f"data.cache={ram_cache}")
    for name in ("memory_loader", "test_loader"):
        w, d = list(getattr(workers, name)()), list(getattr(device, name)())
        assert [b[0].shape for b in w] == [b[0].shape for b in d]
        for (xw, yw), (xd, yd) in zip(w, d):
            assert torch.equal(xw, xd) and torch.equal(yw, yd), name
    assert torch.equal(workers.test_set[2][0], device.test_set[2][0]), "item access too"
    again = _dm(fx, tmp_path, "data.pipeline=device", "data.image_size=24", f"data.cache={ram_cache}")
    again.setup()
    assert again.test_set.split.hit and again.memory_set.split.hit, "stored once, keyed by the eval sizes"
    assert torch.equal(again.test_set.held.host, device.test_set.held.host)
    other = _dm(fx, tmp_path, "data.pipeline=device", "data.image_size=16", f"data.cache={ram_cache}")
    other.setup()
    assert not other.test_set.split.hit and other.test_set[0][0].shape == (3, 16, 16)


def test_eval_features_and_metrics_are_the_same_on_both_pipelines(tmp_path):
    """One tiny model, both pipelines: identical evaluation features and identical metrics."""
    from fgssl.eval.suite import run_evaluation
    from fgssl.methods import build_method

    fx = make_imagefolder_set(tmp_path / "ds")
    workers, device = _pair(fx, tmp_path)
    cfg = compose_cfg(fx.overrides() + ["debug=smoke", "data.image_size=24", "method.queue_size=16"])
    torch.manual_seed(0)
    method = build_method(cfg)
    got = [run_evaluation(method, dm, cfg, torch.device("cpu"), progress=False) for dm in (workers, device)]
    timing = {k for k in got[0] if k.endswith("_seconds")}
    assert {k: v for k, v in got[0].items() if k not in timing} == {k: v for k, v in got[1].items() if k not in timing}


def test_with_data_cache_the_views_are_drawn_on_the_workers_paths_geometry(tmp_path):
    """data.cache=true: the workers path crops its RAM copies (shorter side S); the device pipeline draws its
    boxes in those copies' pixels too, so under an image's seed both draw the same crop box (and every other
    parameter: the draws are torchvision's)."""
    fx = make_imagefolder_set(tmp_path / "ds")
    workers, device = _pair(fx, tmp_path, "data.cache=true")
    rrc = v2.RandomResizedCrop(24, scale=(0.2, 1.0), antialias=True)
    for i, img in enumerate(workers.train_set.cache):
        assert device.train_pipe.sizes[i].tolist() == list(img.shape[-2:])
        for seed in (sample_seed(0, e, i) for e in range(5)):
            torch.manual_seed(seed)
            box = rrc.make_params([img])
            ours = dp.view_params(seed, *device.train_pipe.sizes[i].tolist(), device.train_pipe.knobs)[0]
            assert [box[k] for k in ("top", "left", "height", "width")] == \
                [int(ours[c]) for c in (dp.TOP, dp.LEFT, dp.HEIGHT, dp.WIDTH)]

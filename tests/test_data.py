"""Readers, the datamodule, image conversion and the bad-input policy of fgssl.data."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg
from fgssl.data.datamodule import FGVRDataModule, ImageDataset
from fgssl.data.images import load_rgb, read_bad_log
from fgssl.data.readers import EMBEDDED_CUB53, read_split
from fgssl.data.transforms import eval_transform
from fgssl.errors import FgsslError
from fixtures import make_dataset, make_imagefolder_set, one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


KINDS = ["cub", "cars", "aircraft", "imagefolder"]


def _dm(fx, tmp_path: Path, *overrides: str, world_size: int = 1) -> FGVRDataModule:
    cfg = compose_cfg(fx.overrides() + ["debug=smoke", "data.num_workers=0", *overrides])
    return FGVRDataModule(cfg.data, cfg.eval, str(tmp_path / "run"), world_size)


# ---------------------------------------------------------------------- readers
@pytest.mark.parametrize("kind", KINDS)
def test_reader_returns_official_split(kind, tmp_path):
    fx = make_dataset(kind, tmp_path / kind)
    train = read_split(kind, str(fx.root), "train")
    test = read_split(kind, str(fx.root), "test")
    assert train.classes == fx.classes
    assert test.classes == fx.classes
    assert train.samples == fx.train
    assert test.samples == fx.test
    assert not set(p for p, _ in train.samples) & set(p for p, _ in test.samples)
    assert all(Path(p).is_file() for p, _ in train.samples + test.samples)


def test_cub_split_follows_train_test_split_file(tmp_path):
    """1 = train in train_test_split.txt; flipping one line moves exactly that image."""
    fx = make_dataset("cub", tmp_path)
    split = fx.root / "train_test_split.txt"
    lines = split.read_text().split("\n")
    img_id, flag = lines[0].split()
    assert flag == "1"
    lines[0] = f"{img_id} 0"
    split.write_text("\n".join(lines))
    rel = dict(line.split(" ", 1) for line in (fx.root / "images.txt").read_text().splitlines())[img_id]
    moved = str(fx.root / "images" / rel)
    train = read_split("cub", str(fx.root), "train")
    test = read_split("cub", str(fx.root), "test")
    assert moved not in {p for p, _ in train.samples}
    assert moved in {p for p, _ in test.samples}
    assert len(train.samples) == len(fx.train) - 1 and len(test.samples) == len(fx.test) + 1


def test_cub_accepts_parent_of_cub_200_2011(tmp_path):
    fx = make_dataset("cub", tmp_path)
    assert read_split("cub", str(fx.root.parent), "train").samples == fx.train


def test_embedded_cub53():
    assert EMBEDDED_CUB53.is_dir()
    train = read_split("cub53", None, "train")
    test = read_split("cub53", None, "test")
    assert len(train.classes) == 53 and test.classes == train.classes
    assert len(train.samples) == 2190
    assert len(test.samples) == 941
    assert {y for _, y in train.samples} == set(range(53)) == {y for _, y in test.samples}


# ---------------------------------------------------------------------- datamodule
@pytest.mark.parametrize("cache", [False, True])
def test_datamodule_two_views_and_eval_batches(cache, tmp_path):
    fx = make_imagefolder_set(tmp_path / "ds")
    dm = _dm(fx, tmp_path, "data.batch_size=4", "data.image_size=24", "data.eval_batch_size=5",
             f"data.cache={str(cache).lower()}")
    dm.setup()
    assert dm.num_classes == 3 and dm.num_train == 18 and len(dm.test_samples) == 9
    loader = dm.train_dataloader()
    assert len(loader) == 18 // 4  # drop_last
    (x1, x2), y = next(iter(loader))
    assert x1.shape == x2.shape == (4, 3, 24, 24)
    assert x1.dtype == torch.float32
    assert not torch.allclose(x1, x2), "the two views must be independent augmentations"
    assert y.shape == (4,) and set(y.tolist()) <= {0, 1, 2}
    mem = list(dm.memory_loader())
    assert [b[0].shape[0] for b in mem] == [5, 5, 5, 3]
    assert mem[0][0].shape[1:] == (3, 24, 24)
    assert torch.cat([b[1] for b in mem]).tolist() == [y for _, y in fx.train]
    te = list(dm.test_loader())
    assert torch.cat([b[1] for b in te]).tolist() == [y for _, y in fx.test]
    # evaluation is deterministic (centre crop)
    assert torch.equal(next(iter(dm.test_loader()))[0], te[0][0])
    # val dataloaders = (memory, test) for the online kNN
    assert len(dm.val_dataloader()) == 2


def test_eval_max_images_caps_both_splits(tmp_path):
    fx = make_imagefolder_set(tmp_path / "ds")
    dm = _dm(fx, tmp_path, "eval.max_images=6")
    dm.setup()
    assert len(dm.memory_set) == 6 and len(dm.test_set) == 6
    assert dm.num_train == 18, "the cap applies to evaluation only"
    assert {y for _, y in dm.memory_set.samples} == {0, 1, 2}


def test_batch_larger_than_dataset(tmp_path):
    fx = make_imagefolder_set(tmp_path / "ds")
    with pytest.raises(FgsslError, match=r"data\.batch_size=100.*18 training images"):
        _dm(fx, tmp_path, "data.batch_size=100").setup()
    # the global batch counts: 10 x 2 processes > 18
    with pytest.raises(FgsslError, match=r"batch_size=10 \(x 2 processes\)"):
        _dm(fx, tmp_path, "data.batch_size=10", world_size=2).setup()
    _dm(fx, tmp_path, "data.batch_size=9", world_size=2).setup()


# ---------------------------------------------------------------------- image modes
def _mode_images(d: Path):
    """One image per PIL mode fgssl must convert, with a known expected RGB value."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    Image.new("L", (30, 20), 77).save(d / "gray.jpg", quality=100)
    out["L"] = (d / "gray.jpg", None)
    Image.new("CMYK", (30, 20), (0, 0, 0, 0)).save(d / "cmyk.jpg", quality=100)
    out["CMYK"] = (d / "cmyk.jpg", None)
    rgba = Image.new("RGBA", (30, 20), (10, 200, 30, 0))  # fully transparent -> composited on white
    rgba.save(d / "rgba.png")
    out["RGBA"] = (d / "rgba.png", (255, 255, 255))
    Image.new("LA", (30, 20), (40, 255)).save(d / "la.png")
    out["LA"] = (d / "la.png", (40, 40, 40))
    pal = Image.new("P", (30, 20), 1)
    pal.putpalette([0, 0, 0, 12, 34, 56] + [0] * (256 * 3 - 6))
    pal.save(d / "palette.png")
    out["P"] = (d / "palette.png", (12, 34, 56))
    Image.fromarray(np.full((20, 30), 256 * 90, dtype=np.uint16)).save(d / "gray16.png")
    out["I;16"] = (d / "gray16.png", (90, 90, 90))
    return out


def test_modes_load_as_rgb(tmp_path):
    for mode, (path, expect) in _mode_images(tmp_path).items():
        with Image.open(path) as im:
            assert im.mode.startswith(mode[0]), (mode, im.mode)
        img = load_rgb(str(path))
        assert img.mode == "RGB", mode
        assert img.size == (30, 20)
        px = np.asarray(img)
        assert px.shape == (20, 30, 3)
        if expect is not None:
            assert tuple(px[5, 5]) == expect, mode
        if mode == "L":
            assert abs(int(px[5, 5, 0]) - 77) <= 2 and px[5, 5, 0] == px[5, 5, 1] == px[5, 5, 2]
        if mode == "CMYK":
            assert px.min() >= 250  # CMYK 0,0,0,0 is white
    ds = ImageDataset([(str(p), 0) for p, _ in _mode_images(tmp_path / "b").values()], eval_transform(16))
    for i in range(len(ds)):
        x, _ = ds[i]
        assert x.shape == (3, 16, 16)


def test_mixed_modes_in_a_training_batch(tmp_path):
    fx = make_imagefolder_set(tmp_path / "ds")
    paths = _mode_images(tmp_path / "modes")
    for i, (path, _) in enumerate(paths.values()):
        (tmp_path / "ds" / "train" / "class_0" / f"mode{i}{path.suffix}").write_bytes(path.read_bytes())
        (tmp_path / "ds" / "test" / "class_1" / f"mode{i}{path.suffix}").write_bytes(path.read_bytes())
    dm = _dm(fx, tmp_path, "data.batch_size=24", "data.image_size=16", "data.eval_batch_size=64")
    dm.setup()
    assert dm.num_train == 18 + len(paths)
    (x1, x2), _ = next(iter(dm.train_dataloader()))
    assert x1.shape == x2.shape == (24, 3, 16, 16)
    x, _ = next(iter(dm.test_loader()))
    assert x.shape == (9 + len(paths), 3, 16, 16)
    assert not (tmp_path / "run" / "bad_images.txt").exists()


# ---------------------------------------------------------------------- bad images
def _make_bad(fx):
    """zero-byte and garbage files (caught at setup), and a JPEG whose scan data is cut
    (its header verifies; decoding fails, so it is caught when loaded)."""
    zero = Path(fx.train[1][0])
    zero.write_bytes(b"")
    garbage = Path(fx.train[7][0])
    garbage.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG " * 4)
    cut = Path(fx.test[4][0])
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 50])
    return zero, garbage, cut


@pytest.mark.parametrize("pipeline", ["workers", "device"])
def test_bad_images_skipped_with_warning_and_listed(pipeline, tmp_path):
    fx = make_imagefolder_set(tmp_path / "ds")
    zero, garbage, cut = _make_bad(fx)
    dm = _dm(fx, tmp_path, "data.eval_batch_size=4", f"data.pipeline={pipeline}", f"data.cache_dir={tmp_path / 'c'}")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        dm.setup()
        batches = list(dm.test_loader())
    msgs = [str(w.message) for w in rec]
    for p in (zero, garbage, cut):
        assert any(str(p) in m for m in msgs), f"no warning names {p}: {msgs}"
    assert dm.num_train == 16
    assert str(zero) not in {p for p, _ in dm.train_samples}
    if pipeline == "workers":  # the unreadable test image is replaced when loaded, the batch count is unchanged
        assert sum(b[0].shape[0] for b in batches) == 9
    else:  # the decode-once cache leaves it out (and names it), also when the cache is loaded from disk
        assert sum(b[0].shape[0] for b in batches) == 8 and str(cut) not in {p for p, _ in dm.test_samples}
        (tmp_path / "run" / "bad_images.txt").unlink()
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            again = _dm(fx, tmp_path, f"data.pipeline={pipeline}", f"data.cache_dir={tmp_path / 'c'}")
            again.setup()
        assert again.test_set.split.hit and again.test_samples == dm.test_samples
        assert any(str(cut) in str(w.message) for w in rec)
    log = tmp_path / "run" / "bad_images.txt"
    listed = dict(read_bad_log(log))
    assert set(listed) == {str(zero), str(garbage), str(cut)}
    assert "zero-byte" in listed[str(zero)]
    assert "truncated" in listed[str(cut)]


@pytest.mark.parametrize("which", ["zero", "garbage"])
def test_bad_image_error_policy_at_setup(which, tmp_path):
    fx = make_imagefolder_set(tmp_path / "ds")
    bad = Path(fx.train[7][0])
    bad.write_bytes(b"" if which == "zero" else b"\xff\xd8\xff\xe0 this is not a JPEG " * 4)
    dm = _dm(fx, tmp_path, "data.on_bad_image=error")
    with pytest.raises(FgsslError) as ei:
        dm.setup()
    assert str(bad) in str(ei.value)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_image_error_policy_at_load(workers, tmp_path):
    """A file that only fails when decoded: the error names it in one line, also from a worker."""
    fx = make_imagefolder_set(tmp_path / "ds")
    cut = Path(fx.test[4][0])
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 50])
    dm = _dm(fx, tmp_path, "data.on_bad_image=error", f"data.num_workers={workers}", "data.pipeline=workers")
    dm.setup()
    with pytest.raises(FgsslError) as ei:
        list(dm.test_loader())
    msg = str(ei.value)
    assert str(cut) in msg
    assert "\n" not in msg and "Traceback" not in msg, msg


def test_bad_image_error_policy_device_pipeline_stops_at_decode(tmp_path):
    """The device pipeline decodes at setup: a file that only fails when decoded stops the run there, named."""
    fx = make_imagefolder_set(tmp_path / "ds")
    cut = Path(fx.test[4][0])
    cut.write_bytes(cut.read_bytes()[:-50])
    dm = _dm(fx, tmp_path, "data.on_bad_image=error", "data.pipeline=device", f"data.cache_dir={tmp_path / 'c'}")
    with pytest.raises(FgsslError) as ei:
        dm.setup()
    msg = str(ei.value)
    assert str(cut) in msg and "data.on_bad_image=skip" in msg and "\n" not in msg, msg


def test_unknown_bad_image_policy():
    """A policy outside the schema's choices stops before anything is read (the validation layer)."""
    from fgssl.errors import ConfigError
    from fgssl.preflight import check_cli_keys

    with pytest.raises(ConfigError, match=r"data.on_bad_image='ignore'.*skip, error"):
        check_cli_keys(["data.on_bad_image=ignore"])


# ---------------------------------------------------------------------- missing roots / files
LAYOUT_WORDS = {
    "cub": "image_class_labels.txt",
    "cars": "cars_meta.mat",
    "aircraft": "variants.txt",
    "imagefolder": "train/<class>",
    "cub53": "train/<class>",
}


@pytest.mark.parametrize("kind", sorted(LAYOUT_WORDS))
def test_missing_root_names_path_and_layout(kind, tmp_path):
    missing = tmp_path / "no" / "such_dir"
    with pytest.raises(FgsslError) as ei:
        read_split(kind, str(missing), "train")
    msg = str(ei.value)
    assert str(missing) in msg
    assert "Expected layout" in msg and LAYOUT_WORDS[kind] in msg


@pytest.mark.parametrize("kind,rel", [
    ("cub", "CUB_200_2011/train_test_split.txt"),
    ("cub", "CUB_200_2011/images"),
    ("cars", "stanford_cars/devkit/cars_meta.mat"),
    ("cars", "stanford_cars/cars_test_annos_withlabels.mat"),
    ("aircraft", "fgvc-aircraft-2013b/data/variants.txt"),
    ("aircraft", "fgvc-aircraft-2013b/data/images_variant_test.txt"),
    ("imagefolder", "test"),
])
def test_missing_file_names_it(kind, rel, tmp_path):
    fx = make_dataset(kind, tmp_path / "ds", train_per_class=1, test_per_class=1)
    target = tmp_path / "ds" / rel
    assert target.exists()
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(FgsslError) as ei:
        read_split(kind, str(fx.root), "train")
        read_split(kind, str(fx.root), "test")
    assert str(target) in str(ei.value)
    assert "Expected layout" in str(ei.value)


@pytest.mark.parametrize("kind", ["cub", "cars", "aircraft", "imagefolder"])
def test_root_required(kind):
    with pytest.raises(FgsslError, match=f"data={kind} needs data.root"):
        read_split(kind, None, "train")


def test_missing_root_through_datamodule(tmp_path):
    cfg = compose_cfg(["data=cub", f"data.root={tmp_path / 'nope'}", "debug=smoke"])
    with pytest.raises(FgsslError, match="nope.*Expected layout"):
        FGVRDataModule(cfg.data, cfg.eval, None).setup()


def test_augmentation_strength_knobs_reach_the_views():
    """data.gray_p / jitter_p / blur_p / jitter_strength change the views (defaults = MoCo v2)."""
    import torch

    from fgssl.data.transforms import mocov2_view

    img = torch.zeros(3, 48, 48, dtype=torch.uint8)
    img[0] = 200  # pure red
    always_gray = mocov2_view(32, gray_p=1.0, jitter_p=0.0, blur_p=0.0)(img)
    assert torch.allclose(always_gray[0] * 0.229 + 0.485, always_gray[1] * 0.224 + 0.456, atol=1e-5)
    keep_colour = mocov2_view(32, gray_p=0.0, jitter_p=0.0, blur_p=0.0)(img)
    assert (keep_colour[0] * 0.229 + 0.485 - (keep_colour[1] * 0.224 + 0.456)).abs().min() > 0.5
    no_jitter = mocov2_view(32, min_scale=1.0, jitter_strength=0.0, jitter_p=1.0, gray_p=0.0, blur_p=0.0)
    torch.manual_seed(0)
    assert torch.allclose(no_jitter(img), keep_colour, atol=1e-5)

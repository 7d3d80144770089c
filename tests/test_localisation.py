"""Localisation score (issue 6): crop geometry, pointing game, part hit rate, on the official CUB layout."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import fgssl.eval.localisation as loc
from conftest import compose_cfg
from fgssl.data.datamodule import FGVRDataModule
from fgssl.data.transforms import denormalize, eval_transform
from fgssl.errors import FgsslError
from fgssl.factory import build_model as build_method
from fgssl.factory import resolve_derived as resolve_queue
from fixtures import make_dataset, one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


@pytest.mark.parametrize("w,h", [(40, 40), (50, 30), (30, 57), (160, 113)])
def test_crop_geometry_matches_the_eval_transform(w, h):
    """A point mapped by crop_geometry lands where the real eval transform puts it."""
    size = 32
    # channel 0 encodes x, channel 1 encodes y: linear ramps survive bilinear resizing away from borders
    xs = torch.linspace(0, 1, w).expand(h, w)
    ys = torch.linspace(0, 1, h).unsqueeze(1).expand(h, w)
    img = Image.fromarray((torch.stack([xs, ys, torch.zeros(h, w)], -1) * 255).round().byte().numpy())
    crop = denormalize(eval_transform(size)(img))
    sx, sy, left, top = loc.crop_geometry(w, h, size)
    for u, v in [(8, 8), (16, 16), (24, 10)]:
        # crop pixel (u, v) -> original coordinates by the inverse of crop_geometry's map
        ox = (u + 0.5 + left) / sx - 0.5
        oy = (v + 0.5 + top) / sy - 0.5
        assert float(crop[0, v, u]) * (w - 1) == pytest.approx(ox, abs=1.0)
        assert float(crop[1, v, u]) * (h - 1) == pytest.approx(oy, abs=1.0)


def test_score_peaks_hand_example():
    size = 32  # 40x40 image -> Resize(37) -> scale 0.925, CenterCrop(32): left = top = round(2.5) = 2
    assert loc.crop_geometry(40, 40, size) == (0.925, 0.925, 2, 2)
    box = (2.0, 3.0, 30.0, 31.0)  # crop coords: x in [-0.15, 27.6], y in [0.775, 29.45]
    part = [(20.0, 20.0)]  # crop coords (16.5, 16.5); radius 0.15 * 32 = 4.8
    anns = [loc.Annotation(box, part, (40, 40)),   # peak (16, 16): inside, 0.7 px from the part
            loc.Annotation(box, part, (40, 40)),   # peak (30, 10): right of the box, 14.9 px away
            loc.Annotation(box, [], (40, 40))]     # peak (10, 10): inside; no visible part
    peaks = torch.tensor([[16.0, 16.0], [30.0, 10.0], [10.0, 10.0]])
    got = loc.score_peaks(peaks, anns, size)
    assert got["pointing_game"] == pytest.approx(100 * 2 / 3)
    assert got["part_hit_rate"] == pytest.approx(50.0)  # images without visible parts are not counted


def test_read_cub_annotations_keeps_visible_parts_only(tmp_path):
    fx = make_dataset("cub", tmp_path)
    anns = loc.read_cub_annotations(str(fx.root.parent))  # the parent of CUB_200_2011 works too
    assert len(anns) == len(fx.train) + len(fx.test)
    a = next(iter(anns.values()))
    assert a.box == (2.0, 3.0, 30.0, 31.0)
    # the fixture marks parts 1, 3, ..., 15 visible at (5 + k, 6 + k)
    assert a.parts == [(5.0 + k, 6.0 + k) for k in range(1, 16, 2)]


def _cub_with_known_boxes(tmp_path):
    """CUB fixture whose test images alternate between a box (and part) around the whole image and a
    1-pixel box (and part) in the top-left corner; returns (fixture, expected fraction in %)."""
    fx = make_dataset("cub", tmp_path, classes=2, train_per_class=3, test_per_class=4)
    root = fx.root
    ids = {rel.strip(): i for i, rel in (ln.split(" ", 1) for ln in (root / "images.txt").read_text().splitlines())}
    test_paths = {str(p) for p, _ in fx.test}
    boxes, parts, whole = [], [], 0
    k = 0
    for rel, i in ids.items():
        path = str(root / "images" / rel)
        with Image.open(path) as im:
            w, h = im.size
        centre = path in test_paths and k % 2 == 0
        if path in test_paths:
            k += 1
            whole += int(centre)
        if centre:
            boxes.append(f"{i} 0 0 {w} {h}")
            parts.append(f"{i} 1 {w / 2} {h / 2} 1")
        else:
            boxes.append(f"{i} 0 0 1 1")
            parts.append(f"{i} 1 0 0 1")
            parts.append(f"{i} 2 {w / 2} {h / 2} 0")  # invisible parts never count
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "parts" / "part_locs.txt").write_text("\n".join(parts) + "\n")
    return fx, 100.0 * whole / len(test_paths)


def _setup(fx, *overrides):
    cfg = compose_cfg(fx.overrides() + ["debug=smoke", "data.num_workers=0", "data.image_size=32",
                                        "data.batch_size=4", *overrides])
    dm = FGVRDataModule(cfg.data, cfg.eval, None)
    dm.setup()
    resolve_queue(cfg, dm.num_train, 1)
    return cfg, dm, build_method(cfg)


def test_localisation_scores_on_cub_fixture(tmp_path, monkeypatch):
    fx, expected = _cub_with_known_boxes(tmp_path)
    cfg, dm, method = _setup(fx)

    def centre_peak(method, x):  # every map peaks in the centre of the crop
        maps = torch.zeros(len(x), 5, 5)
        maps[:, 2, 2] = 1.0
        return maps

    monkeypatch.setattr(loc, "ssl_gradcam", centre_peak)
    got = loc.localisation_scores(method, dm, cfg.data.root, torch.device("cpu"))
    assert got == {"test/loc_gradcam_pointing_game": pytest.approx(expected),
                   "test/loc_gradcam_part_hit_rate": pytest.approx(expected)}
    assert 0 < expected < 100


def test_localisation_real_maps_for_gradcam_and_lcr(tmp_path):
    fx = make_dataset("cub", tmp_path, classes=2, train_per_class=3, test_per_class=3)
    cfg, dm, method = _setup(fx, "rationale=lcr")
    got = loc.localisation_scores(method, dm, cfg.data.root, torch.device("cpu"))
    assert set(got) == {f"test/loc_{m}_{s}" for m in ("gradcam", "lcr") for s in ("pointing_game", "part_hit_rate")}
    assert all(0.0 <= v <= 100.0 for v in got.values())


def test_localisation_needs_boxes(tmp_path):
    fx = make_dataset("cub", tmp_path, classes=2, train_per_class=3, test_per_class=2)
    (fx.root / "bounding_boxes.txt").unlink()
    cfg, dm, method = _setup(fx)
    with pytest.raises(FgsslError, match="bounding_boxes.txt"):
        loc.localisation_scores(method, dm, cfg.data.root, torch.device("cpu"))

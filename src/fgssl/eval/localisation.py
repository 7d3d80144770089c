"""Localisation scores of attention maps on datasets that ship boxes and parts.

No peer SSL framework measures *where* a self-supervised model looks. For CUB
(``bounding_boxes.txt``, ``parts/part_locs.txt``) fgssl scores two maps per test image:

* ``gradcam``: Grad-CAM of the method's own SSL loss, ``ReLU(sum_c A * dL/dA)``,
  with the image and its horizontal flip as the positive pair (a deterministic
  pair, so the map stays aligned with the image);
* ``lcr``: the LCR branch attention (when the model has an LCR regularizer).

Scores (percent):

* **pointing game**: fraction of images whose map peak falls inside the object box;
* **part hit rate**: fraction of images whose map peak lies within ``radius``
  (a fraction of the crop side, default 0.15) of at least one visible part.

Maps live on the evaluation crop (Resize(S*256/224) + CenterCrop(S)); boxes and
part points are mapped into the same crop coordinates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from fgssl.errors import FgsslError
from fgssl.nets.bn_state import bn_stats_kept
from fgssl.nets.gradcam import gradcam_map


@dataclass
class Annotation:
    box: Tuple[float, float, float, float]  # x, y, w, h in original pixels
    parts: List[Tuple[float, float]]  # visible part points in original pixels
    size: Tuple[int, int]  # original (W, H)


def read_cub_annotations(root: str) -> Dict[str, Annotation]:
    """Map image path -> box and visible parts, from the official CUB files."""
    base = Path(root).expanduser()
    if not (base / "images.txt").exists() and (base / "CUB_200_2011" / "images.txt").exists():
        base = base / "CUB_200_2011"
    need = [base / "images.txt", base / "bounding_boxes.txt"]
    for p in need:
        if not p.exists():
            raise FgsslError(f"localisation needs {p} (CUB_200_2011 layout with bounding_boxes.txt)")
    images = dict(line.split(" ", 1) for line in (base / "images.txt").read_text().split("\n") if line.strip())
    boxes = {}
    for line in (base / "bounding_boxes.txt").read_text().split("\n"):
        if line.strip():
            i, x, y, w, h = line.split()
            boxes[i] = tuple(map(float, (x, y, w, h)))
    parts: Dict[str, List[Tuple[float, float]]] = {}
    pl = base / "parts" / "part_locs.txt"
    if pl.exists():
        for line in pl.read_text().split("\n"):
            if line.strip():
                i, _pid, x, y, vis = line.split()[:5]
                if float(vis) > 0:
                    parts.setdefault(i, []).append((float(x), float(y)))
    out = {}
    for i, rel in images.items():
        path = os.path.abspath(base / "images" / rel.strip())
        if i in boxes:
            out[path] = Annotation(boxes[i], parts.get(i, []), (0, 0))
    return out


def crop_geometry(w: int, h: int, size: int) -> Tuple[float, float, int, int]:
    """(scale_x, scale_y, left, top) of Resize(round(size*256/224)) + CenterCrop(size), as torchvision does it."""
    r = round(size * 256 / 224)
    nw, nh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
    return nw / w, nh / h, int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))


def ssl_gradcam(method, x: Tensor) -> Tensor:
    """Grad-CAM of the SSL loss for ``x`` paired with its horizontal flip: (N, h, w) (the method contract's
    :meth:`~fgssl.methods.base.SSLMethod.pair_gradcam`, which leaves every statistic as it was)."""
    a1, g = method.pair_gradcam(x)
    return gradcam_map(a1, g)


def lcr_attention(method, x: Tensor) -> Optional[Tensor]:
    """The LCR branch attention (N, h, w), or None when the model has no LCR regularizer."""
    for reg in method.regularizers:
        fn = getattr(reg, "attention", None)
        if fn is not None:
            with torch.no_grad(), bn_stats_kept(method):
                a, _ = method.encode(x)
                return fn(a)
    return None


def peak_xy(maps: Tensor, size: int) -> Tensor:
    """Peak (x, y) of each map after bilinear upsampling to size x size: (N, 2)."""
    up = F.interpolate(maps.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=False)
    idx = up.flatten(1).argmax(dim=1)
    return torch.stack([idx % size, idx // size], dim=1).float() + 0.5


def score_peaks(peaks: Tensor, anns: List[Annotation], size: int, radius: float = 0.15) -> Dict[str, float]:
    """Pointing game and part hit rate (percent) for peaks in crop coordinates."""
    inside, part_hits, with_parts = 0, 0, 0
    for (px, py), ann in zip(peaks.tolist(), anns):
        sx, sy, left, top = crop_geometry(ann.size[0], ann.size[1], size)
        x, y, w, h = ann.box
        bx0, by0, bx1, by1 = x * sx - left, y * sy - top, (x + w) * sx - left, (y + h) * sy - top
        inside += int(bx0 <= px <= bx1 and by0 <= py <= by1)
        if ann.parts:
            with_parts += 1
            d = min(((qx * sx - left - px) ** 2 + (qy * sy - top - py) ** 2) ** 0.5 for qx, qy in ann.parts)
            part_hits += int(d <= radius * size)
    n = max(1, len(anns))
    return {"pointing_game": 100.0 * inside / n, "part_hit_rate": 100.0 * part_hits / max(1, with_parts)}


def localisation_scores(method, dm, root: str, device: torch.device, max_images: Optional[int] = None,
                        radius: float = 0.15) -> Dict[str, float]:
    """Score Grad-CAM (and LCR attention) peaks on the test split of a CUB-layout dataset."""
    anns = read_cub_annotations(root)
    size = dm.cfg.image_size
    method = method.to(device)
    peaks: Dict[str, List[Tensor]] = {"gradcam": [], "lcr": []}
    used: List[Annotation] = []
    count = 0
    for x, _ in dm.test_loader():
        x = x.to(device)
        peaks["gradcam"].append(peak_xy(ssl_gradcam(method, x), size).cpu())
        att = lcr_attention(method, x)
        if att is not None:
            peaks["lcr"].append(peak_xy(att, size).cpu())
        count += len(x)
        if max_images and count >= max_images:
            break
    paths = [os.path.abspath(p) for p, _ in dm.test_set.samples][:count]
    for p in paths:
        if p not in anns:
            raise FgsslError(f"localisation: no box for {p} in bounding_boxes.txt")
        ann = anns[p]
        with Image.open(p) as im:
            ann.size = im.size
        used.append(ann)
    out = {}
    for name, chunks in peaks.items():
        if chunks:
            for k, v in score_peaks(torch.cat(chunks)[: len(used)], used, size, radius).items():
                out[f"test/loc_{name}_{k}"] = v
    return out

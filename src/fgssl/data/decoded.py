"""Decode once: a split's images as one uint8 tensor, stored on disk under a key of the file list and the
sizes, so the next run loads it at once (the device pipeline, :mod:`fgssl.data.device`).

Two caches per split:

* :func:`decoded_cache` -- the training images, each resized to S x S (original H, W kept), from which
  both views are cropped on the device;
* :func:`eval_crop_cache` -- the evaluation images: the output of the reference evaluation transform
  (:func:`fgssl.data.transforms.eval_crop`, Resize(size * 256/224) + CenterCrop(size) with torchvision)
  run once per image on exactly the input the workers path gives it, so the evaluation tensors of both
  pipelines are the same (normalised per batch by :func:`fgssl.data.transforms.eval_normalize`).

An image that fails to decode is skipped and named (warning + ``bad_images.txt``), also on a cache hit;
with ``on_bad="error"`` the run stops with one line naming it. Writes are atomic (tmp + rename).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch import Tensor

from fgssl.data.images import load_rgb, record_bad, to_rgb
from fgssl.data.transforms import cache_resize, eval_crop, eval_resize
from fgssl.errors import FgsslError
from fgssl.fsio import disk_full_error, is_disk_full, remove_quietly, serialized_size

CACHE_VERSION = 1
Samples = List[Tuple[str, int]]
#: path -> (uint8 (3, s, s) image, original (H, W)); raises FgsslError naming an unreadable file
Decoder = Callable[[str], Tuple[Tensor, Tuple[int, int]]]


def default_cache_dir() -> Path:
    env = os.environ.get("FGSSL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "fgssl"


def cache_bytes(n: int, side: int) -> int:
    return n * 3 * side * side


def cache_key(samples: Sequence[Tuple[str, int]], side: int, tag: str = "") -> str:
    """sha256 of the file list (path, byte size, label), the side and ``tag`` (the other sizes of a cache):
    any added, removed or rewritten file of another size, or another size, gives another key."""
    h = hashlib.sha256(f"fgssl-cache-v{CACHE_VERSION} side={side}{tag}\n".encode())
    for path, label in samples:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        h.update(f"{os.path.abspath(path)}\t{size}\t{label}\n".encode())
    return h.hexdigest()[:20]


def _decode(path: str, side: int) -> Tuple[Tensor, Tuple[int, int]]:
    """Decode ``path`` as RGB resized to side x side (PIL's antialiased bilinear); return it and (H, W)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.format == "JPEG":  # DCT scaling: decode at the smallest 1/2^k size still >= side
                im.draft("RGB", (side, side))
            im.load()
            rgb = to_rgb(im)
        if rgb.size != (side, side):
            rgb = rgb.resize((side, side), Image.BILINEAR)
        t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(side, side, 3).permute(2, 0, 1)
        return t.contiguous(), (h, w)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image
        raise FgsslError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def eval_decoder(size: int, pre_side: Optional[int] = None) -> Decoder:
    """The reference evaluation crop of one file, computed on what the workers path feeds
    ``eval_transform``: the full-resolution RGB image, or with ``pre_side`` (``data.cache=true`` on the
    workers path) its RAM-cache copy with the shorter side resized to ``pre_side``."""
    crop = eval_crop(size)
    pre = cache_resize(pre_side) if pre_side else None

    def decode(path: str) -> Tuple[Tensor, Tuple[int, int]]:
        img = load_rgb(path)  # FgsslError naming the file if unreadable
        w, h = img.size
        return crop(pre(img) if pre is not None else img).as_subclass(Tensor).contiguous(), (h, w)

    return decode


def ram_copy_sizes(sizes: Tensor, side: int) -> Tensor:
    """(H, W) of the workers path's RAM copies (``data.cache``: ``Resize(side)``, shorter edge to ``side``, the
    longer one ``int(side * long / short)`` as torchvision computes it) of images of original ``sizes``."""
    out = sizes.clone()
    for n, (h, w) in enumerate(sizes.tolist()):
        short, long = (h, w) if h <= w else (w, h)
        new_long = int(side * long / short)
        out[n] = torch.tensor((side, new_long) if h <= w else (new_long, side), dtype=sizes.dtype)
    return out


@dataclass
class DecodedSplit:
    """A split decoded once: ``images`` (N, 3, S, S) uint8, ``sizes`` (N, 2) original (H, W), the kept samples."""

    images: Tensor
    sizes: Tensor
    samples: Samples
    path: Optional[Path] = None
    hit: bool = False


def _load(path: Path, samples: Samples, on_bad: str, bad_log: Optional[Path]) -> Optional[DecodedSplit]:
    """The stored cache at ``path``, or None when it is unreadable (then it is rebuilt, never trusted)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        bad = [tuple(b) for b in obj["bad"]]
        if bad and on_bad == "error":
            raise FgsslError(f"bad image {bad[0][0]}: {bad[0][1]} (set data.on_bad_image=skip to leave such "
                             "files out)")
        for p, why in bad:
            record_bad(p, why, bad_log)
        kept = [samples[i] for i in obj["kept"].tolist()]
        return DecodedSplit(obj["images"], obj["sizes"], kept, path, True)
    except FgsslError:
        raise
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"rebuilding the decoded cache {path}: {type(e).__name__}: {e}", stacklevel=3)
        return None


def _decode_all(samples: Samples, decode: Decoder, side: int, on_bad: str, bad_log: Optional[Path],
                threads: int):
    """Decode every sample (threads: PIL releases the GIL); returns images, sizes, kept rows, bad files."""
    images = torch.empty((len(samples), 3, side, side), dtype=torch.uint8)
    sizes = torch.zeros((len(samples), 2), dtype=torch.int32)
    ok = [False] * len(samples)

    def one(i: int) -> Optional[str]:
        try:
            images[i], hw = decode(samples[i][0])
        except FgsslError as e:
            return str(e)
        sizes[i] = torch.tensor(hw, dtype=torch.int32)
        ok[i] = True
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        errors = list(pool.map(one, range(len(samples))))
    bad: List[Tuple[str, str]] = []
    for (p, _), err in zip(samples, errors):
        if err is None:
            continue
        if on_bad == "error":
            raise FgsslError(f"{err} (set data.on_bad_image=skip to leave such files out)")
        bad.append((p, err))
        record_bad(p, err, bad_log)
    kept = torch.tensor([i for i, good in enumerate(ok) if good], dtype=torch.long)
    return images[kept].contiguous(), sizes[kept].contiguous(), kept, bad


def _store(path: Path, obj: dict, what: str) -> Optional[Path]:
    """Atomic write (a killed run leaves no half-written cache under the final name); None if it failed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
        return path
    except OSError as e:
        remove_quietly(tmp)  # a partial file would only fill the disk further
        why = (str(disk_full_error(path, serialized_size(obj), f"the {what} are kept in memory for this run"))
               if is_disk_full(e) else f"could not store the decoded cache in {path.parent} ({e}); it is kept "
               f"in memory only")
        warnings.warn(why, stacklevel=3)
        return None


def _cached(samples: Samples, path: Path, decode: Decoder, side: int, on_bad: str, bad_log: Optional[Path],
            threads: int, what: str) -> DecodedSplit:
    if path.is_file():
        hit = _load(path, samples, on_bad, bad_log)
        if hit is not None:
            return hit
    images, sizes, kept, bad = _decode_all(samples, decode, side, on_bad, bad_log, threads)
    obj = {"images": images, "sizes": sizes, "kept": kept, "bad": [list(b) for b in bad], "version": CACHE_VERSION}
    stored = _store(path, obj, what)
    return DecodedSplit(images, sizes, [samples[i] for i in kept.tolist()], stored, False)


def decoded_cache(samples: Samples, side: int, cache_dir: Optional[Path], on_bad: str = "skip",
                  bad_log: Optional[Path] = None, threads: int = 4) -> DecodedSplit:
    """Load the split's decoded cache (S x S training images) from ``cache_dir`` or decode it once and store it."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"decoded-{cache_key(samples, side)}-{side}px.pt"
    return _cached(samples, path, lambda p: _decode(p, side), side, on_bad, bad_log, threads, "decoded images")


def eval_crop_cache(samples: Samples, size: int, pre_side: Optional[int], cache_dir: Optional[Path],
                    on_bad: str = "skip", bad_log: Optional[Path] = None, threads: int = 4) -> DecodedSplit:
    """The reference evaluation crops (uint8, size x size) of ``samples``, decoded once and stored, keyed by
    the files and the eval transform's sizes (crop, resize, the workers RAM-cache side ``pre_side``)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tag = f" eval resize={eval_resize(size)} crop={size} pre={pre_side}"
    path = cache_dir / f"evalcrops-{cache_key(samples, size, tag)}-{size}px.pt"
    return _cached(samples, path, eval_decoder(size, pre_side), size, on_bad, bad_log, threads, "evaluation crops")

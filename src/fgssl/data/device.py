"""The device pipeline (``data.pipeline=device``): decode once, hold the dataset on the training device,
draw both MoCo v2 views there in batches.

* **Decode once.** :func:`decoded_cache` decodes every image of a split once into a uint8 tensor
  ``(N, 3, S, S)`` (each image resized to S x S, its original height and width kept) and stores it on
  disk under a key of the file list, the file sizes and S (atomic write), so the next run loads it at once.
  An image that fails to decode is skipped and named (warning + ``bad_images.txt``), also on a cache hit.
* **Hold it in memory.** :class:`DevicePipeline` places the cache on the training device: GPU memory when
  it fits ``data.cache_budget_gb`` and half of the free GPU memory, otherwise pinned host memory (gathered
  per batch and copied with ``non_blocking=True``); on a CPU run it is plain RAM.
* **Per-image parameters from per-image seeds.** :func:`view_params` draws the two views' parameters of an
  image from its seed ``(seed, epoch, index)`` (:mod:`fgssl.data.sampling`) with the same draws, in the same
  order, as torchvision's ``mocov2_view`` under ``torch.manual_seed(seed)`` (the workers path): for an image
  of the same size the crop box, flip, jitter factors and order, grayscale and blur decisions are *equal*,
  not only equally distributed. Boxes are drawn in the original image's pixels and mapped to the cache.
  Drawing happens in the loader (workers on a GPU run), so resume and DDP keep their exactness.
* **Augment in batches.** :func:`augment` applies them to the whole batch on the device.

Libraries: the colour steps are kornia's (``kornia.enhance`` -- the very functions behind
``kornia.augmentation.ColorJitter``, which follow torchvision's formulas -- plus ``kornia.color`` and
``kornia.filters.gaussian_blur2d``), except the hue step (:func:`hue_shift`, measured 2.4x faster than
``kornia.enhance.adjust_hue`` with the same result). We call them, not the ``kornia.augmentation``
modules, because those draw their parameters per batch from the global RNG and apply one jitter order
to the whole batch, while exact resume and DDP need parameters from each image's own seed and
torchvision draws an order per image; the modules' ``params=`` replay cannot express a per-image
order. The crop-and-resize of every box is one ``torchvision.ops.roi_align`` call: it averages
``ceil(box / output)`` samples per output pixel, an antialiased resize like torchvision's
``RandomResizedCrop(antialias=True)``, whereas kornia's crop resamples bilinearly without
antialiasing. ``make bench`` measures this pipeline against ``kornia.augmentation``
(docs/data_pipeline.md).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import kornia  # at import, not in a function: a first import inside a forked loader worker trips wandb's
import torch  # import hook ("ForkedError: not valid in a forked process") and killed the main job's loader
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import roi_align

from fgssl.data.images import record_bad, to_rgb
from fgssl.data.sampling import ResumableLoader, ResumableSampler
from fgssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, _blur_kernel
from fgssl.errors import FgsslError
from fgssl.fsio import disk_full_error, is_disk_full, remove_quietly, serialized_size

CACHE_VERSION = 1
#: Layout of one view's parameter row (see :func:`view_params`).
TOP, LEFT, HEIGHT, WIDTH, JITTER, BRIGHT, CONTRAST, SAT, HUE = range(9)
ORDER = slice(9, 13)
GRAY, BLUR, SIGMA, FLIP = 13, 14, 15, 16
NPARAM = 17
_LOG_RATIO = torch.log(torch.tensor((3.0 / 4.0, 4.0 / 3.0)))  # float32, as torchvision's RandomResizedCrop


# ---------------------------------------------------------------------- decode once
def default_cache_dir() -> Path:
    env = os.environ.get("FGSSL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "fgssl"


def cache_bytes(n: int, side: int) -> int:
    return n * 3 * side * side


def cache_key(samples: Sequence[Tuple[str, int]], side: int) -> str:
    """sha256 of the file list (path, byte size, label) and the side: any added, removed or rewritten file
    of another size, or another side, gives another key."""
    h = hashlib.sha256(f"fgssl-cache-v{CACHE_VERSION} side={side}\n".encode())
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


@dataclass
class DecodedSplit:
    """A split decoded once: ``images`` (N, 3, S, S) uint8, ``sizes`` (N, 2) original (H, W), the kept samples."""

    images: Tensor
    sizes: Tensor
    samples: List[Tuple[str, int]]
    path: Optional[Path] = None
    hit: bool = False


def decoded_cache(samples: List[Tuple[str, int]], side: int, cache_dir: Optional[Path], on_bad: str = "skip",
                  bad_log: Optional[Path] = None, threads: int = 4) -> DecodedSplit:
    """Load the split's decoded cache from ``cache_dir`` or decode it once and store it there."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"decoded-{cache_key(samples, side)}-{side}px.pt"
    if path.is_file():
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
        except Exception as e:  # noqa: BLE001 - an unreadable cache is rebuilt, never trusted
            warnings.warn(f"rebuilding the decoded cache {path}: {type(e).__name__}: {e}", stacklevel=2)
    images = torch.empty((len(samples), 3, side, side), dtype=torch.uint8)
    sizes = torch.zeros((len(samples), 2), dtype=torch.int32)
    ok = [False] * len(samples)
    bad: List[Tuple[str, str]] = []

    def one(i: int) -> Optional[str]:
        try:
            images[i], hw = _decode(samples[i][0], side)
        except FgsslError as e:
            return str(e)
        sizes[i] = torch.tensor(hw, dtype=torch.int32)
        ok[i] = True
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL releases the GIL while decoding
        errors = list(pool.map(one, range(len(samples))))
    for (p, _), err in zip(samples, errors):
        if err is None:
            continue
        if on_bad == "error":
            raise FgsslError(f"{err} (set data.on_bad_image=skip to leave such files out)")
        bad.append((p, err))
        record_bad(p, err, bad_log)
    kept_idx = torch.tensor([i for i, good in enumerate(ok) if good], dtype=torch.long)
    images, sizes = images[kept_idx].contiguous(), sizes[kept_idx].contiguous()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    obj = {"images": images, "sizes": sizes, "kept": kept_idx, "bad": [list(b) for b in bad], "version": CACHE_VERSION}
    try:  # atomic: a killed run leaves no half-written cache under the final name
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)  # a partial file would only fill the disk further
        why = (str(disk_full_error(path, serialized_size(obj), "the decoded images are kept in memory for this run"))
               if is_disk_full(e) else f"could not store the decoded cache in {cache_dir} ({e}); it is kept in "
               f"memory only")
        warnings.warn(why, stacklevel=2)
        path = None
    return DecodedSplit(images, sizes, [samples[i] for i in kept_idx.tolist()], path, False)


# ---------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class ViewKnobs:
    """The augmentation-strength knobs of ``data.*`` (defaults = MoCo v2), as in ``mocov2_view``."""

    min_scale: float = 0.2
    jitter_strength: float = 1.0
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5

    def ranges(self):
        """torchvision's ColorJitter ranges (None = that step is off and draws nothing)."""
        s = self.jitter_strength

        def around(v: float, center: float, clip: bool):
            lo, hi = center - v, center + v
            lo = max(lo, 0.0) if clip else lo
            return None if lo == hi == center else (float(lo), float(hi))

        return (around(0.4 * s, 1.0, True), around(0.4 * s, 1.0, True), around(0.4 * s, 1.0, True),
                around(0.1 * s, 0.0, False))


def _uniform(g: torch.Generator, lo, hi) -> float:
    return torch.empty(1).uniform_(lo, hi, generator=g).item()


def _draw_view(g: torch.Generator, height: int, width: int, k: ViewKnobs, out: Tensor) -> None:
    """One view's parameters, drawn exactly as torchvision's ``mocov2_view`` draws them (same calls, same order)."""
    # RandomResizedCrop(scale=(min_scale, 1), ratio=(3/4, 4/3)), in the original image's pixels
    area = height * width
    for _ in range(10):
        target = area * _uniform(g, k.min_scale, 1.0)
        aspect = torch.exp(torch.empty(1).uniform_(_LOG_RATIO[0], _LOG_RATIO[1], generator=g)).item()
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
            break
    else:  # torchvision's fallback: the central crop at the nearest allowed ratio
        ratio = float(width) / float(height)
        if ratio < 3 / 4:
            w, h = width, int(round(width / (3 / 4)))
        elif ratio > 4 / 3:
            h, w = height, int(round(height * (4 / 3)))
        else:
            w, h = width, height
        i, j = (height - h) // 2, (width - w) // 2
    out[TOP], out[LEFT], out[HEIGHT], out[WIDTH] = i, j, h, w
    # RandomApply([ColorJitter(...)], p=jitter_p): randperm(4), then one uniform per active range
    out[BRIGHT], out[CONTRAST], out[SAT], out[HUE] = 1.0, 1.0, 1.0, 0.0
    out[ORDER] = torch.arange(4)
    if torch.rand(1, generator=g).item() < k.jitter_p:
        out[JITTER] = 1.0
        out[ORDER] = torch.randperm(4, generator=g).to(out.dtype)
        for slot, r in zip((BRIGHT, CONTRAST, SAT, HUE), k.ranges()):
            if r is not None:
                out[slot] = _uniform(g, r[0], r[1])
    out[GRAY] = float(torch.rand(1, generator=g).item() < k.gray_p)  # RandomGrayscale
    if torch.rand(1, generator=g).item() < k.blur_p:  # RandomApply([GaussianBlur(sigma=(0.1, 2))])
        out[BLUR] = 1.0
        out[SIGMA] = _uniform(g, 0.1, 2.0)
    out[FLIP] = float(torch.rand(1, generator=g).item() < 0.5)  # RandomHorizontalFlip


def view_params(seed: int, height: int, width: int, knobs: ViewKnobs = ViewKnobs()) -> Tensor:
    """``(2, NPARAM)`` float64: both views of one image, from its augmentation seed."""
    g = torch.Generator().manual_seed(int(seed))
    out = torch.zeros((2, NPARAM), dtype=torch.float64)
    _draw_view(g, height, width, knobs, out[0])
    _draw_view(g, height, width, knobs, out[1])
    return out


# ---------------------------------------------------------------------- batched ops
def _boxes(params: Tensor, sizes: Tensor, side: int) -> Tensor:
    """Boxes (x1, y1, x2, y2) in cache pixels of crops given in original pixels (the cache is S x S)."""
    sy = side / sizes[:, 0].double()
    sx = side / sizes[:, 1].double()
    top, left, h, w = params[:, TOP], params[:, LEFT], params[:, HEIGHT], params[:, WIDTH]
    return torch.stack([left * sx, top * sy, (left + w) * sx, (top + h) * sy], dim=1)


def crop_resize(images: Tensor, boxes: Tensor, which: Tensor, size: int) -> Tensor:
    """Crop ``boxes`` (K, 4) from ``images[which]`` and resize each to size x size: one roi_align call
    (``aligned=True``: pixel centres at +0.5 as in torchvision's resize; adaptive sampling averages
    ``ceil(box/size)`` points per output pixel, i.e. an antialiased downscale). Returns float in [0, 1]."""

    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images
    rois = torch.cat([which.to(x.dtype).unsqueeze(1), boxes.to(x.dtype)], dim=1).to(x.device)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True).clamp_(0.0, 1.0)


def hue_shift(x: Tensor, turns: Tensor) -> Tensor:
    """torchvision's ``adjust_hue`` (HSV hue + ``turns``) for a batch with per-image shifts, in closed form.

    Our own op, not ``kornia.enhance.adjust_hue``: same result (within 2e-6 of torchvision, tested), about
    2.4x faster on the CPU (the hue step is the most expensive colour step; ``make bench`` times both, see
    docs/data_pipeline.md). HSV -> RGB is ``c = V - V S clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6H) mod 6``,
    n = 5, 3, 1 for R, G, B, with ``V = max`` and ``V S = max - min`` of the input.
    """
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    d = maxc - minc
    dz = torch.where(d > 0, d, torch.ones_like(d))
    h = torch.where(maxc == r, (g - b) / dz, torch.where(maxc == g, 2.0 + (b - r) / dz, 4.0 + (r - g) / dz))
    h6 = torch.remainder(torch.where(d > 0, h, torch.zeros_like(h)) + 6.0 * turns.view(-1, 1, 1), 6.0)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + h6.unsqueeze(1), 6.0)
    return maxc.unsqueeze(1) - d.unsqueeze(1) * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _subset(x: Tensor, idx: Tensor, fn: Callable[[Tensor], Tensor]) -> None:
    if idx.numel():
        x.index_copy_(0, idx, fn(x.index_select(0, idx)))


def augment(images: Tensor, sizes: Tensor, params: Tensor, size: int) -> Tensor:
    """Both views of a batch on the images' device.

    ``images`` (B, 3, S, S) uint8 on the device, ``sizes`` (B, 2) original (H, W) and ``params``
    (B, 2, NPARAM) on the CPU. Returns (2, B, 3, size, size) normalised float32.
    """
    dev = images.device
    b = images.shape[0]
    p = params.transpose(0, 1).reshape(2 * b, NPARAM)  # view-major: rows 0..B-1 view 1, B..2B-1 view 2
    which = torch.arange(b).repeat(2)
    x = crop_resize(images, _boxes(p, sizes.repeat(2, 1), images.shape[-1]), which, size)

    def rows(mask: Tensor) -> Tensor:  # index sets are computed on the CPU: no device sync
        return mask.nonzero().flatten().to(dev)

    def factor(col: int, idx: Tensor) -> Tensor:
        return p[:, col].float().to(dev).index_select(0, idx)

    jitter = p[:, JITTER] > 0
    order = p[:, ORDER].long()
    steps = {
        0: lambda t, i: kornia.enhance.adjust_brightness_accumulative(t, factor(BRIGHT, i)),
        1: lambda t, i: kornia.enhance.adjust_contrast_with_mean_subtraction(t, factor(CONTRAST, i)),
        2: lambda t, i: kornia.enhance.adjust_saturation_with_gray_subtraction(t, factor(SAT, i)),
        3: lambda t, i: hue_shift(t, factor(HUE, i)),
    }
    neutral = {0: (BRIGHT, 1.0), 1: (CONTRAST, 1.0), 2: (SAT, 1.0), 3: (HUE, 0.0)}
    for slot in range(4):  # each image's own order: at slot k, image n runs its order[n, k]-th step
        for op, fn in steps.items():
            col, ident = neutral[op]
            sel = jitter & (order[:, slot] == op) & (p[:, col] != ident)  # torchvision skips a None range
            i = rows(sel)
            _subset(x, i, lambda t, fn=fn, i=i: fn(t, i).clamp(0.0, 1.0))
    _subset(x, rows(p[:, GRAY] > 0), lambda t: kornia.color.rgb_to_grayscale(t).expand(-1, 3, -1, -1))
    blur = rows(p[:, BLUR] > 0)
    if blur.numel():
        k = _blur_kernel(size)
        sig = p[:, SIGMA].float().to(dev).index_select(0, blur)
        _subset(x, blur, lambda t: kornia.filters.gaussian_blur2d(t, (k, k), torch.stack([sig, sig], 1),
                                                                  border_type="reflect"))
    _subset(x, rows(p[:, FLIP] > 0), lambda t: t.flip(-1))
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    return ((x - mean) / std).view(2, b, 3, size, size)


def eval_boxes(sizes: Tensor, size: int) -> Tensor:
    """The boxes, in original pixels, of ``Resize(round(size * 256/224))`` + ``CenterCrop(size)``, with
    torchvision's integer sizes and offsets (the resized long side is truncated, the offsets rounded)."""
    r = round(size * 256 / 224)
    p = torch.zeros((len(sizes), NPARAM), dtype=torch.float64)
    for n, (h, w) in enumerate(sizes.tolist()):
        rh, rw = (r, int(r * w / h)) if h <= w else (int(r * h / w), r)
        top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
        sy, sx = h / rh, w / rw
        p[n, TOP], p[n, LEFT], p[n, HEIGHT], p[n, WIDTH] = top * sy, left * sx, size * sy, size * sx
    return p


def eval_crops(images: Tensor, sizes: Tensor, size: int) -> Tensor:
    """Normalised centre crops of a batch (the evaluation transform), on the images' device."""
    dev = images.device
    boxes = _boxes(eval_boxes(sizes, size), sizes, images.shape[-1])
    x = crop_resize(images, boxes, torch.arange(images.shape[0]), size)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------- placement
class DevicePipeline:
    """A decoded split held on the training device, and the views / crops drawn from it."""

    def __init__(self, split: DecodedSplit, image_size: int, knobs: ViewKnobs, budget_bytes: int):
        self.split = split
        self.size = image_size
        self.knobs = knobs
        self.budget = budget_bytes
        self.side = int(split.images.shape[-1])
        self.host = split.images  # CPU (mmap of the disk cache, or the freshly decoded tensor)
        self.sizes = split.sizes
        self.placed: Optional[torch.device] = None
        self.where = "RAM"
        self._dev: Optional[Tensor] = None

    @property
    def nbytes(self) -> int:
        return self.host.numel()

    def place(self, device: torch.device) -> str:
        """Put the cache on ``device`` (once); returns where it went."""
        device = torch.device(device)
        if self.placed == device:
            return self.where
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self.nbytes <= min(self.budget, free // 2):
                self._dev, self.where = self.host.to(device), "GPU memory"
            else:
                self.host = self.host.pin_memory()
                self._dev, self.where = None, "pinned host memory"
        else:
            self.host = self.host.clone() if not self.host.is_contiguous() else self.host
            self._dev, self.where = (self.host if device.type == "cpu" else self.host.to(device)), "RAM"
        self.placed = device
        return self.where

    def gather(self, idx: Tensor) -> Tensor:
        """uint8 images ``idx`` on the placed device."""
        if self._dev is not None:
            return self._dev.index_select(0, idx.to(self._dev.device))
        buf = self.host.index_select(0, idx)
        if self.placed is None or self.placed.type == "cpu":  # not placed yet: the host copy
            return buf
        return buf.pin_memory().to(self.placed, non_blocking=True)  # pinned host cache: async copy

    def views(self, idx: Tensor, params: Tensor) -> Tuple[Tensor, Tensor]:
        x = augment(self.gather(idx), self.sizes.index_select(0, idx), params, self.size)
        return x[0], x[1]

    def crops(self, idx: Tensor) -> Tensor:
        return eval_crops(self.gather(idx), self.sizes.index_select(0, idx), self.size)


# ---------------------------------------------------------------------- datasets and loaders
class ViewParamSet(Dataset):
    """``(index, seed) -> (index, (2, NPARAM) view parameters, label)``: the CPU part of a device batch."""

    def __init__(self, pipe: DevicePipeline):
        # no reference to the cache itself: loader workers (GPU runs) only draw parameters
        self.knobs = pipe.knobs
        self.samples = pipe.split.samples
        self.sizes = pipe.sizes.tolist()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> List[int]:
        return [y for _, y in self.samples]

    def __getitem__(self, key):
        i, seed = key
        h, w = self.sizes[i]
        return i, view_params(seed, h, w, self.knobs), self.samples[i][1]


class CropSet(Dataset):
    """Evaluation view of a decoded split (a subset ``rows`` of it): ``i -> (centre crop, label)``."""

    def __init__(self, pipe: DevicePipeline, rows: Optional[List[int]] = None):
        self.pipe = pipe
        self.rows = list(range(len(pipe.split.samples))) if rows is None else list(rows)
        self.samples = [pipe.split.samples[r] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def targets(self) -> List[int]:
        return [y for _, y in self.samples]

    def __getitem__(self, i: int):
        """One crop on the CPU (figures, image grids); loaders crop whole batches on the device."""
        r = torch.tensor([self.rows[i]])
        return eval_crops(self.pipe.host.index_select(0, r), self.pipe.sizes.index_select(0, r),
                          self.pipe.size)[0], self.samples[i][1]


def _index_collate(batch):
    return torch.tensor([b for b in batch], dtype=torch.long)


class _ViewsInWorker:
    """collate_fn of a CPU run with loader workers: the worker draws the whole batch's views from the cache
    (shared with the main process through fork), so they overlap with the training step."""

    def __init__(self, pipe: DevicePipeline):
        self.pipe = pipe

    def __call__(self, items):
        idx = torch.tensor([it[0] for it in items], dtype=torch.long)
        params = torch.stack([it[1] for it in items])
        return self.pipe.views(idx, params), torch.tensor([it[2] for it in items], dtype=torch.long)


class DeviceTrainLoader(ResumableLoader):
    """The resumable, sharded loader of :mod:`fgssl.data.sampling` over view parameters; iterating it
    yields ``((x1, x2), y)`` drawn from the cache. On a GPU (or without workers) the batch's parameters are
    drawn in the loader and its views in the main process on the device; on a CPU run with workers
    (``in_workers``) each worker draws whole batches of views, overlapped with the training step."""

    def __init__(self, pipe: DevicePipeline, sampler: ResumableSampler, batches_done=None,
                 in_workers: bool = False, **kw):
        self.pipe = pipe
        self.in_workers = bool(in_workers) and kw.get("num_workers", 0) > 0
        if self.in_workers:
            kw["collate_fn"] = _ViewsInWorker(pipe)
        super().__init__(ViewParamSet(pipe), sampler, batches_done, **kw)

    def __iter__(self):
        if self.in_workers:
            yield from super().__iter__()
            return
        for idx, params, y in super().__iter__():
            yield self.pipe.views(idx, params), y

    def one_off(self) -> "DeviceTrainLoader":
        """The same batches from a fresh sampler and no persistent workers (SYN's warm start)."""
        import copy

        sampler = copy.copy(self.sampler)
        sampler.skip = 0
        return DeviceTrainLoader(self.pipe, sampler, in_workers=self.in_workers, num_workers=self.num_workers,
                                 worker_init_fn=self.worker_init_fn, generator=torch.Generator().manual_seed(0))


class DeviceEvalLoader(DataLoader):
    """Fixed-order batches of centre crops cut on the device from the cache: ``(x, y)``."""

    def __init__(self, crops: CropSet, batch_size: int, sampler=None):
        self.crops = crops
        super().__init__(list(range(len(crops))), batch_size=batch_size, sampler=sampler, shuffle=False,
                         collate_fn=_index_collate)

    def __iter__(self):
        rows = torch.tensor(self.crops.rows, dtype=torch.long)
        y_all = torch.tensor(self.crops.targets, dtype=torch.long)
        for i in super().__iter__():
            yield self.crops.pipe.crops(rows.index_select(0, i)), y_all.index_select(0, i)

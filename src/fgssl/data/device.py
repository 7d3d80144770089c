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
* **Evaluation.** The evaluation images are the reference evaluation transform's output itself
  (Resize + CenterCrop with torchvision, run once per image at decode time on the input the workers path
  gives it), cached as uint8 beside the training cache and held on the device the same way; each batch
  is normalised there with the same ops. Both pipelines' evaluation tensors are therefore equal.

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

import copy
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fgssl.data.decoded import (  # noqa: F401
    CACHE_VERSION,
    DecodedSplit,
    cache_bytes,
    cache_key,
    decoded_cache,
    default_cache_dir,
    eval_crop_cache,
    eval_decoder,
    ram_copy_sizes,
)
from fgssl.data.device_ops import augment, crop_resize, hue_shift  # noqa: F401
from fgssl.data.sampling import ResumableLoader, ResumableSampler
from fgssl.data.transforms import eval_normalize
from fgssl.data.view_params import (  # noqa: F401
    BLUR,
    BRIGHT,
    CONTRAST,
    FLIP,
    GRAY,
    HEIGHT,
    HUE,
    JITTER,
    LEFT,
    NPARAM,
    ORDER,
    SAT,
    SIGMA,
    TOP,
    WIDTH,
    ViewKnobs,
    view_params,
)
from fgssl.workers import usable_cores


# ---------------------------------------------------------------------- placement
class HeldImages:
    """A uint8 image tensor held on the training device: GPU memory when it fits ``budget_bytes`` and half
    of the free GPU memory, otherwise pinned host memory (gathered per batch, copied non-blocking); RAM on
    a CPU run."""

    def __init__(self, images: Tensor, budget_bytes: int):
        self.host = images  # CPU (mmap of the disk cache, or the freshly decoded tensor)
        self.budget = budget_bytes
        self.placed: Optional[torch.device] = None
        self.where = "RAM"
        self._dev: Optional[Tensor] = None

    @property
    def nbytes(self) -> int:
        return self.host.numel()

    def place(self, device: torch.device) -> str:
        """Put the images on ``device`` (once); returns where they went."""
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


class DevicePipeline(HeldImages):
    """A decoded split held on the training device, and the two views drawn from it."""

    def __init__(self, split: DecodedSplit, image_size: int, knobs: ViewKnobs, budget_bytes: int):
        super().__init__(split.images, budget_bytes)
        self.split = split
        self.size = image_size
        self.knobs = knobs
        self.side = int(split.images.shape[-1])
        self.sizes = split.sizes

    def views(self, idx: Tensor, params: Tensor) -> Tuple[Tensor, Tensor]:
        x = augment(self.gather(idx), self.sizes.index_select(0, idx), params, self.size)
        return x[0], x[1]


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
    """An evaluation set of the device pipeline: the reference evaluation crops of its samples (uint8, from
    :func:`fgssl.data.decoded.eval_crop_cache`), held on the device; ``i -> (normalised crop, label)``."""

    def __init__(self, split: DecodedSplit, budget_bytes: int, rows: Optional[List[int]] = None):
        images, self.samples = split.images, split.samples
        if rows is not None and len(rows) < len(split.samples):  # a capped subset (eval.max_images)
            images = images.index_select(0, torch.tensor(rows, dtype=torch.long))
            self.samples = [split.samples[r] for r in rows]
        self.held = HeldImages(images, budget_bytes)
        self.split = split
        self._norm = eval_normalize()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> List[int]:
        return [y for _, y in self.samples]

    def place(self, device) -> str:
        return self.held.place(device)

    def crops(self, idx: Tensor) -> Tensor:
        """Normalised crops ``idx`` on the placed device: the eval transform's ops, batched."""
        return self._norm(self.held.gather(idx))

    def __getitem__(self, i: int):
        """One crop on the CPU (figures, image grids); loaders normalise whole batches on the device."""
        return self._norm(self.held.host[i]), self.samples[i][1]


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


def views_in_workers(device: torch.device, num_workers: int) -> bool:
    """Whether the loader workers draw the views (else the main process does, on the training device).

    GPU: never (the views are drawn on the GPU). CPU: only when the model's torch threads leave a core free
    for the workers to overlap with; when they already use every core, workers only oversubscribe them.
    Measured on the 2-core CPU, 2 torch threads, quiet machine (`make bench`, docs/results.md): real-data /
    synthetic step 1.14x (MoCo v2) and 1.10x (SimSiam) with 2 workers drawing the views, 1.09x and 1.08x
    drawn in the main process (0 workers)."""
    if device.type != "cpu" or num_workers <= 0:
        return False
    return torch.get_num_threads() < usable_cores()


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
        sampler = copy.copy(self.sampler)
        sampler.skip = 0
        return DeviceTrainLoader(self.pipe, sampler, in_workers=self.in_workers, num_workers=self.num_workers,
                                 worker_init_fn=self.worker_init_fn, generator=torch.Generator().manual_seed(0))


class DeviceEvalLoader(DataLoader):
    """Fixed-order batches of the reference evaluation crops, normalised on the device: ``(x, y)``."""

    def __init__(self, crops: CropSet, batch_size: int, sampler=None):
        self.crops = crops
        super().__init__(list(range(len(crops))), batch_size=batch_size, sampler=sampler, shuffle=False,
                         collate_fn=_index_collate)

    def __iter__(self):
        y_all = torch.tensor(self.crops.targets, dtype=torch.long)
        for i in super().__iter__():
            yield self.crops.crops(i), y_all.index_select(0, i)

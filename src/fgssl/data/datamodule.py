"""LightningDataModule: two-view pre-training set, train-eval (memory) set, test set.

Two input pipelines (``data.pipeline``): ``device`` (:mod:`fgssl.data.device`: decode once, cache on the
training device, both views augmented there in batches) and ``workers`` (PIL decode and per-image
torchvision augmentation in loader workers). ``auto`` takes ``device`` when the decoded dataset fits
``data.cache_budget_gb`` and says which in one log line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from fgssl import layout
from fgssl.data import device as devpipe
from fgssl.data.checks import check_batch_size
from fgssl.data.images import filter_bad, load_rgb, record_bad
from fgssl.data.readers import read_split
from fgssl.data.sampling import ResumableLoader, ResumableSampler, ShardSampler
from fgssl.data.transforms import TwoViews, cache_resize, eval_transform, mocov2_view
from fgssl.errors import FgsslError
from fgssl.workers import QuietWorkerInit


class ImageDataset(Dataset):
    """(path, label) samples -> (transform(image), label).

    With ``cache_side`` set, every image is decoded once (shorter side resized to
    ``cache_side``) and kept in RAM as a uint8 tensor.
    A file that fails to decode later is, with ``on_bad='skip'``, recorded in
    ``bad_log`` and replaced by the next sample; with ``'error'`` it raises an
    error naming the file.
    """

    def __init__(self, samples: List[Tuple[str, int]], transform, cache_side: Optional[int] = None,
                 on_bad: str = "skip", bad_log: Optional[Path] = None):
        self.samples = samples
        self.transform = transform
        self.on_bad = on_bad
        self.bad_log = bad_log
        self.cache = None
        if cache_side:
            resize = cache_resize(cache_side)
            self.cache = [resize(load_rgb(p)) for p, _ in samples]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> List[int]:
        return [y for _, y in self.samples]

    def _image(self, i: int):
        if self.cache is not None:
            return self.cache[i]
        return load_rgb(self.samples[i][0])

    def __getitem__(self, key: Union[int, Tuple[int, int]]):
        """``key`` is an index, or ``(index, seed)`` from :class:`ResumableSampler`: then the random
        transform runs under that seed (the global RNG is left as it was)."""
        if isinstance(key, (tuple, list)):
            i, seed = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._load(i)
        return self._load(key)

    def _load(self, i: int):
        for attempt in range(len(self.samples)):
            j = (i + attempt) % len(self.samples)
            try:
                img = self._image(j)
            except FgsslError as e:
                if self.on_bad == "error":
                    raise
                record_bad(self.samples[j][0], str(e), self.bad_log)
                continue
            return self.transform(img), self.samples[j][1]
        raise FgsslError("no readable image left in the dataset")


def _cap_rows(count: int, n: Optional[int]) -> List[int]:
    """Evenly spaced rows, at most ``n`` of ``count`` (keeps every class when n allows)."""
    if n is None or n >= count:
        return list(range(count))
    return torch.linspace(0, count - 1, n).round().long().unique().tolist()


def _cap(samples: List[Tuple[str, int]], n: Optional[int]) -> List[Tuple[str, int]]:
    """Evenly spaced subset of at most ``n`` samples (keeps every class when n allows)."""
    return [samples[i] for i in _cap_rows(len(samples), n)]


PIPELINES = ("auto", "device", "workers")


class FGVRDataModule(pl.LightningDataModule):
    def __init__(self, data: DictConfig, eval_cfg: DictConfig, out_dir: Optional[str] = None,
                 world_size: int = 1, seed: int = 0):
        super().__init__()
        self.seed = seed
        self.cfg = data
        self.eval_cfg = eval_cfg
        self.out_dir = Path(out_dir) if out_dir else None
        self.world_size = world_size
        self._ready = False
        #: ``device`` or ``workers`` once set up; the reason of an automatic choice
        self.pipeline: Optional[str] = None
        self.pipeline_reason = ""
        self._said = False
        #: print the one line that says which pipeline runs (the bench turns it off: its stdout is JSON)
        self.announce = True
        #: where loaders put their batches when no trainer is attached, or after ``use_device``
        self.device = torch.device("cpu")
        self._forced_device = False

    @property
    def bad_log(self) -> Optional[Path]:
        return self.out_dir / layout.BAD_IMAGES if self.out_dir else None

    def setup(self, stage: Optional[str] = None) -> None:
        if self._ready:
            return
        c = self.cfg
        if c.get("download") and os.environ.get("LOCAL_RANK", "0") == "0":  # DDP: rank 0 prepares before fit
            from fgssl.data.prepare import ensure

            ensure(c.name, c.root)
        train = read_split(c.name, c.root, "train")
        test = read_split(c.name, c.root, "test")
        self.classes = train.classes
        self.num_classes = len(train.classes)
        tr, te = train.samples, test.samples
        if c.verify_images:
            tr = filter_bad(tr, c.on_bad_image, self.bad_log)
            te = filter_bad(te, c.on_bad_image, self.bad_log)
        check_batch_size(c, len(tr), self.world_size)
        cap = self.eval_cfg.max_images
        self.pipeline, self.pipeline_reason = self._choose(len(tr), len(_cap_rows(len(tr), cap)) + len(te))
        if self.pipeline == "device":
            self._setup_device(tr, te)
            self._ready = True
            return
        self.train_samples, self.test_samples = tr, te
        kw = dict(cache_side=self.workers_cache_side, on_bad=c.on_bad_image, bad_log=self.bad_log)
        view = mocov2_view(c.image_size, c.crop_min_scale, c.jitter_strength, c.jitter_p, c.gray_p, c.blur_p)
        self.train_set = ImageDataset(tr, TwoViews(view), **kw)
        ev = eval_transform(c.image_size)
        self.memory_set = ImageDataset(_cap(tr, cap), ev, **kw)
        self.test_set = ImageDataset(_cap(te, cap), ev, **kw)
        self._ready = True

    # ------------------------------------------------------------------ pipeline choice
    @property
    def cache_side(self) -> int:
        return int(self.cfg.cache_size or 2 * self.cfg.image_size)

    @property
    def workers_cache_side(self) -> Optional[int]:
        """Shorter side of the workers path's RAM copies (``data.cache``), None = decoded from disk each time;
        the device pipeline's evaluation crops are computed on the same input."""
        return self.cache_side if self.cfg.cache else None

    def _choose(self, n_train: int, n_eval: int = 0) -> Tuple[str, str]:
        """``n_train`` training images at the cache side, ``n_eval`` evaluation crops at the image size."""
        c = self.cfg
        if c.pipeline not in PIPELINES:
            raise FgsslError(f"data.pipeline={c.pipeline!r} must be one of {', '.join(PIPELINES)}")
        need = devpipe.cache_bytes(n_train, self.cache_side) + devpipe.cache_bytes(n_eval, int(c.image_size))
        budget = float(c.cache_budget_gb) * 2**30
        size = (f"decoded cache {need / 2**20:.1f} MiB ({n_train} images at {self.cache_side}px, {n_eval} eval "
                f"crops at {c.image_size}px)")
        if c.pipeline != "auto":
            return c.pipeline, f"data.pipeline={c.pipeline}, {size}"
        if need <= budget:
            return "device", f"auto: {size} fits data.cache_budget_gb={c.cache_budget_gb:g}"
        return "workers", f"auto: {size} exceeds data.cache_budget_gb={c.cache_budget_gb:g}"

    def _setup_device(self, tr, te) -> None:
        """Training images decoded once at S x S (both views are cropped from them on the device); evaluation
        sets as the reference evaluation crops (:func:`fgssl.data.decoded.eval_crop_cache`)."""
        c = self.cfg
        cache_dir = Path(c.cache_dir).expanduser() if c.cache_dir else None
        knobs = devpipe.ViewKnobs(c.crop_min_scale, c.jitter_strength, c.jitter_p, c.gray_p, c.blur_p)
        budget = int(float(c.cache_budget_gb) * 2**30)
        split = devpipe.decoded_cache(tr, self.cache_side, cache_dir, c.on_bad_image, self.bad_log)
        test = devpipe.eval_crop_cache(te, int(c.image_size), self.workers_cache_side, cache_dir, c.on_bad_image,
                                       self.bad_log)
        if not split.samples or not test.samples:
            raise FgsslError(f"no readable image left in data={c.name} (root {c.root})")
        if self.workers_cache_side:  # the views' geometry of the workers path's RAM copies: the same boxes per seed
            split.sizes = devpipe.ram_copy_sizes(split.sizes, self.workers_cache_side)
        self.train_pipe = devpipe.DevicePipeline(split, c.image_size, knobs, budget)
        self.train_samples, self.test_samples = split.samples, test.samples
        if c.batch_size * self.world_size > len(self.train_samples):
            raise FgsslError(
                f"data.batch_size={c.batch_size} (x {self.world_size} processes) is larger than the "
                f"{len(self.train_samples)} readable training images of data={c.name}; lower data.batch_size"
            )
        self.train_set = devpipe.ViewParamSet(self.train_pipe)
        cap = self.eval_cfg.max_images
        memory = devpipe.eval_crop_cache(_cap(self.train_samples, cap), int(c.image_size), self.workers_cache_side,
                                         cache_dir, c.on_bad_image, self.bad_log)
        self.memory_set = devpipe.CropSet(memory, budget)
        self.test_set = devpipe.CropSet(test, budget, _cap_rows(len(test.samples), cap))

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None and not self._forced_device else self.device

    def use_device(self, device) -> None:
        """Evaluation loaders made from now on cut their batches on ``device``."""
        self.device, self._forced_device = torch.device(device), True

    def _place(self) -> torch.device:
        """Put the device pipeline's caches on the training device; say once which pipeline runs."""
        dev = self._device()
        where = ""
        if self.pipeline == "device":
            where = self.train_pipe.place(dev)
            for held in (self.memory_set, self.test_set):
                held.place(dev)
            where = f", held in {where} ({dev})"
        self.say(where)
        return dev

    def say(self, where: str = "") -> None:
        trainer = self.trainer
        if self._said or not self.announce or (trainer is not None and not trainer.is_global_zero):
            return
        self._said = True
        print(f"fgssl: data pipeline {self.pipeline} ({self.pipeline_reason}{where})", flush=True)

    @property
    def num_train(self) -> int:
        return len(self.train_samples)

    def _eval_loader(self, ds, sampler: Optional[ShardSampler] = None) -> DataLoader:
        """Fixed-order loader over an evaluation set (one process's shard of it with ``sampler``)."""
        if self.pipeline == "device":
            self._place()
            return devpipe.DeviceEvalLoader(ds, self.cfg.eval_batch_size, sampler)
        self.say()
        return DataLoader(ds, batch_size=self.cfg.eval_batch_size, sampler=sampler,
                          num_workers=self.cfg.num_workers, pin_memory=torch.cuda.is_available(),
                          worker_init_fn=QuietWorkerInit(lightning_seed=sampler is not None))

    def train_dataloader(self) -> DataLoader:
        """Seeded, sharded, resumable two-view loader (see :mod:`fgssl.data.sampling`)."""
        trainer = self.trainer
        rank, world, epoch = (0, 1, 0) if trainer is None else (trainer.global_rank, trainer.world_size,
                                                                 trainer.current_epoch)
        sampler = ResumableSampler(len(self.train_set), self.cfg.batch_size, self.seed, rank, world, epoch)

        def batches_done() -> int:
            return 0 if trainer is None else trainer.fit_loop.epoch_loop.batch_progress.current.processed

        nw = self.cfg.num_workers
        if self.pipeline == "device":
            dev = self._place()
            # GPU: workers draw the parameters, the views are drawn on the GPU; CPU with a core to spare: each
            # worker draws whole batches of views (batched ops on the shared cache), overlapped with the step
            return devpipe.DeviceTrainLoader(self.train_pipe, sampler, batches_done,
                                             in_workers=devpipe.views_in_workers(dev, nw),
                                             num_workers=nw, persistent_workers=nw > 0,
                                             worker_init_fn=QuietWorkerInit(lightning_seed=True))
        self.say()
        return ResumableLoader(self.train_set, sampler, batches_done, num_workers=nw,
                               pin_memory=torch.cuda.is_available(), persistent_workers=nw > 0,
                               worker_init_fn=QuietWorkerInit(lightning_seed=True))

    def val_dataloader(self) -> List[DataLoader]:
        """The online kNN monitor's memory and test sets; sharded across DDP processes (the method
        all-gathers the features and keeps the first ``len(set)`` rows)."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return [self.memory_loader(), self.test_loader()]
        return [self._eval_loader(ds, ShardSampler(len(ds), trainer.global_rank, trainer.world_size))
                for ds in (self.memory_set, self.test_set)]

    def memory_loader(self) -> DataLoader:
        return self._eval_loader(self.memory_set)

    def test_loader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

"""Both input pipelines (issue 12): for each method the base step on synthetic tensors already on the device,
then the same step fed by the real train loader of ``data=`` through the ``device`` and the ``workers``
pipeline (real / synthetic for each; MoCo v2 one-directional, as in the peer row); each pipeline's loader
alone; fgssl's batched views against a ``kornia.augmentation`` pipeline of the same transforms on the same
cached batch, and the hue step alone."""

from __future__ import annotations

import copy
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Dict, List

from fgssl.bench.compose import base_overrides, compose, datamodule, error_reason, num_train, resolve
from fgssl.bench.loader import time_loader
from fgssl.bench.steps import SyntheticBatches, sync, time_training

PIPELINES = ("device", "workers")
Put = Callable[[Dict[str, Any]], None]


def one_directional_cfg(a, method: str, conf, extra=()):
    """The base config of ``method`` (MoCo v2 one-directional), its derived values resolved."""
    ov = base_overrides(a, method) + (["method.symmetric=false"] if method == "mocov2" else []) + list(extra)
    cfg = compose(ov, conf)
    resolve(cfg, num_train(cfg))
    return cfg


def _timed_datamodule(cfg, pipeline: str, device: str):
    t0 = time.perf_counter()
    dm = datamodule(cfg, pipeline, device)
    return dm, time.perf_counter() - t0


def _pipeline_row(a, cfg, method: str, pipeline: str, dms: Dict[str, Any], syn_ms: float, meter, put: Put) -> None:
    try:
        if pipeline not in dms:
            dms[pipeline] = _timed_datamodule(copy.deepcopy(cfg), pipeline, a.device)
        dm, _ = dms[pipeline]
        loader = dm.train_dataloader()
        if len(loader) < a.warmup + a.steps:
            raise RuntimeError(f"the train loader has {len(loader)} batches < warm-up + steps")
        views_by = ("workers" if loader.in_workers else "main process") if pipeline == "device" else None
        real = time_training(cfg, loader, a.steps, a.warmup, a.device, meter)
        del loader
    except Exception as e:  # noqa: BLE001
        put({"kind": "error", "method": method, "part": f"{pipeline} pipeline step", "reason": error_reason(e)})
        traceback.print_exc(file=sys.stderr)
        return
    where = getattr(getattr(dm, "train_pipe", None), "where", "") if pipeline == "device" else ""
    put({"kind": "pipeline", "method": method, "pipeline": pipeline, "data": str(cfg.data.name),
         "workers": int(cfg.data.num_workers) if pipeline == "workers" else None, "held_in": where,
         "views_by": views_by, "ms_real": real["ms_per_step"], "ms_synthetic": syn_ms,
         "ratio": real["ms_per_step"] / syn_ms,
         "symmetric": bool(cfg.method.get("symmetric"))})
    print(f"fgssl.bench: {method} {pipeline} pipeline: {real['ms_per_step']:.1f} ms/step (synthetic {syn_ms:.1f})",
          file=sys.stderr, flush=True)


def _alone_rows(a, dms: Dict[str, Any], put: Put) -> None:
    for pipeline in PIPELINES:
        if pipeline not in dms:
            continue
        dm, setup_s = dms[pipeline]
        try:
            res = time_loader(dm.train_dataloader(), a.loader_batches, 2, a.batch, a.device)
        except Exception as e:  # noqa: BLE001
            put({"kind": "error", "part": f"{pipeline} pipeline alone", "reason": error_reason(e)})
            continue
        res.pop("views_per_s", None)
        put({"kind": "pipeline_loader", "pipeline": pipeline, "dataset": str(dm.cfg.name), "setup_s": setup_s,
             "num_train": dm.num_train, "batch": a.batch, **res})


def run_pipelines(a, conf, meter, put: Put) -> None:
    import torch

    dms: Dict[str, Any] = {}
    for method in a.methods:
        cfg = one_directional_cfg(a, method, conf)
        try:
            batches = SyntheticBatches(a.batch, a.image_size, a.warmup + a.steps, torch.device(a.device))
            syn = time_training(cfg, batches, a.steps, a.warmup, a.device, meter)
        except Exception as e:  # noqa: BLE001
            put({"kind": "error", "method": method, "part": "pipeline synthetic step", "reason": error_reason(e)})
            continue
        for pipeline in PIPELINES:
            _pipeline_row(a, cfg, method, pipeline, dms, syn["ms_per_step"], meter, put)
    _alone_rows(a, dms, put)
    if "device" in dms:
        try:
            put({"kind": "augment", **compare_augment(dms["device"][0], a.batch, a.device)})
        except Exception as e:  # noqa: BLE001
            put({"kind": "error", "part": "augmentation library comparison", "reason": error_reason(e)})
    dms.clear()


def _kornia_views(knobs, size: int, device: str):
    """The same transforms as ``kornia.augmentation`` modules (parameters drawn per batch by kornia)."""
    import kornia.augmentation as K
    import torch

    from fgssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, _blur_kernel

    s = knobs.jitter_strength
    return torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(knobs.min_scale, 1.0)),
        K.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s, p=knobs.jitter_p),
        K.RandomGrayscale(p=knobs.gray_p),
        K.RandomGaussianBlur((_blur_kernel(size),) * 2, (0.1, 2.0), p=knobs.blur_p),
        K.RandomHorizontalFlip(),
        K.Normalize(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)),
    ).to(device)


def _interleaved(fns: Dict[str, Callable[[], Any]], reps: int, device: str) -> Dict[str, float]:
    """Median seconds of each function, after one warm-up call each, interleaved so a drifting load weighs on
    all alike."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def compare_augment(dm, batch: int, device: str, reps: int = 9) -> Dict[str, Any]:
    """fgssl's batched views vs kornia.augmentation's modules on the same cached batch (both views)."""
    import math

    import kornia
    import torch

    from fgssl.data.device import hue_shift, view_params

    pipe = dm.train_pipe
    idx = torch.arange(batch) % len(pipe.split.samples)

    def draw():
        return torch.stack([view_params(int(i) + 1, *pipe.sizes[int(i)].tolist(), pipe.knobs) for i in idx])

    params = draw()
    kornia_views = _kornia_views(pipe.knobs, pipe.size, device)

    def theirs():
        x = pipe.gather(idx).float().div_(255.0)
        return kornia_views(x), kornia_views(x)

    x = pipe.views(idx, params)[0]  # a float batch for the hue step alone
    turns = torch.linspace(-0.1, 0.1, batch, device=x.device)
    sec = _interleaved({"fgssl": lambda: pipe.views(idx, draw()),
                        "fgssl_no_param_draw": lambda: pipe.views(idx, params), "kornia_augmentation": theirs,
                        "hue_own": lambda: hue_shift(x, turns),
                        "hue_kornia": lambda: kornia.enhance.adjust_hue(x, turns * (2 * math.pi))}, reps, device)
    rate = {name: batch / v for name, v in sec.items()}
    return {"batch": batch, "image_size": pipe.size, "cache_side": pipe.side,
            "hue_kornia_images_per_s": rate["hue_kornia"], "hue_own_images_per_s": rate["hue_own"],
            "fgssl_images_per_s": rate["fgssl"], "fgssl_no_param_draw_images_per_s": rate["fgssl_no_param_draw"],
            "kornia_augmentation_images_per_s": rate["kornia_augmentation"]}

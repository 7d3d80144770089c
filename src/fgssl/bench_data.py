"""The data-pipeline and peer parts of ``python -m fgssl.bench`` (issue 12).

* **Pipelines** (``kind: pipeline``): for each method, the base step on synthetic tensors already on the
  device, then the same step fed by the real train loader of ``data=`` through the ``device`` pipeline and
  through the ``workers`` pipeline; real / synthetic for each. MoCo v2 runs one-directional
  (``method.symmetric=false``) here, as in the peer row.
* **Pipeline alone** (``kind: pipeline_loader``): images/s of each train loader with nothing else running
  (the device pipeline is synchronised per batch), and the decode / cache-load time.
* **Augmentation library** (``kind: augment``): images/s of fgssl's batched views (per-image parameters,
  kornia colour ops, one ``roi_align`` crop) against a ``kornia.augmentation`` pipeline of the same
  transforms on the same cached uint8 batch (parameters drawn per batch by kornia).
* **Peer** (``kind: peer``): MoCo v2 and SimSiam steps assembled from lightly's heads and losses
  (``pip install lightly``; optional) on the same torchvision backbone, image size, batch, precision and
  device, against fgssl's steps on the same synthetic batches.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List

PIPELINES = ("device", "workers")


def _cfg(a, method: str, conf, extra=()):
    from fgssl.bench import _num_train, _resolve_queue, base_overrides, compose

    ov = base_overrides(a, method) + (["method.symmetric=false"] if method == "mocov2" else []) + list(extra)
    cfg = compose(ov, conf)
    _resolve_queue(cfg, _num_train(cfg))
    return cfg


def _datamodule(cfg, pipeline: str, device: str):
    from omegaconf import open_dict

    from fgssl.data.datamodule import FGVRDataModule

    with open_dict(cfg):
        cfg.data.pipeline = pipeline
    t0 = time.perf_counter()
    dm = FGVRDataModule(cfg.data, cfg.eval, None, 1)
    dm.announce = False  # stdout carries the JSON lines; the record says where the cache is held
    dm.setup()
    dm.use_device(device)
    return dm, time.perf_counter() - t0


def time_module(module, loader, steps: int, warmup: int, device: str, precision: str, meter) -> Dict[str, Any]:
    """Median step time of any LightningModule (the peer's) under the bench's Trainer settings."""
    import pytorch_lightning as pl

    from fgssl.bench import _make_timer, _quiet

    timer = _make_timer(device, warmup, meter)
    with tempfile.TemporaryDirectory(prefix="fgssl-bench-") as root, _quiet():
        trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
                             max_epochs=1, limit_train_batches=warmup + steps, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer], default_root_dir=root)
        trainer.fit(module, train_dataloaders=loader)
    total, _ = timer.step_times()
    return {"ms_per_step": statistics.median(total) * 1e3, "step_ms": [t * 1e3 for t in total]}


def time_pipeline_loader(loader, batches: int, warmup: int, batch: int, device: str) -> Dict[str, Any]:
    """Images/s of a train loader alone; device batches are synchronised (their work is asynchronous)."""
    from fgssl.bench import _sync

    it = iter(loader)
    batches = max(1, min(batches, len(loader) - warmup))
    for _ in range(warmup):
        next(it)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
        _sync(device)
    dt = time.perf_counter() - t0
    return {"images_per_s": batches * batch / dt, "ms_per_batch": dt / batches * 1e3, "batches": batches}


# ---------------------------------------------------------------------- pipelines
def run_pipelines(a, conf, meter, put: Callable[[Dict[str, Any]], None]) -> None:
    import torch

    from fgssl.bench import SyntheticBatches, _error_reason, time_training

    dms: Dict[str, Any] = {}
    for method in a.methods:
        cfg = _cfg(a, method, conf)
        try:
            syn = time_training(cfg, SyntheticBatches(a.batch, a.image_size, a.warmup + a.steps,
                                                      torch.device(a.device)), a.steps, a.warmup, a.device, meter)
        except Exception as e:  # noqa: BLE001
            put({"kind": "error", "method": method, "part": "pipeline synthetic step", "reason": _error_reason(e)})
            continue
        for pipeline in PIPELINES:
            try:
                if pipeline not in dms:
                    dms[pipeline] = _datamodule(copy.deepcopy(cfg), pipeline, a.device)
                dm, setup_s = dms[pipeline]
                loader = dm.train_dataloader()
                if len(loader) < a.warmup + a.steps:
                    raise RuntimeError(f"the train loader has {len(loader)} batches < warm-up + steps")
                real = time_training(cfg, loader, a.steps, a.warmup, a.device, meter)
                del loader
            except Exception as e:  # noqa: BLE001
                put({"kind": "error", "method": method, "part": f"{pipeline} pipeline step",
                     "reason": _error_reason(e)})
                traceback.print_exc(file=sys.stderr)
                continue
            where = getattr(getattr(dm, "train_pipe", None), "where", "") if pipeline == "device" else ""
            put({"kind": "pipeline", "method": method, "pipeline": pipeline, "data": str(cfg.data.name),
                 "workers": int(cfg.data.num_workers) if pipeline == "workers" else None, "held_in": where,
                 "ms_real": real["ms_per_step"], "ms_synthetic": syn["ms_per_step"],
                 "ratio": real["ms_per_step"] / syn["ms_per_step"], "symmetric": bool(cfg.method.get("symmetric"))})
            print(f"fgssl.bench: {method} {pipeline} pipeline: {real['ms_per_step']:.1f} ms/step "
                  f"(synthetic {syn['ms_per_step']:.1f})", file=sys.stderr, flush=True)
    for pipeline in PIPELINES:
        if pipeline not in dms:
            continue
        dm, setup_s = dms[pipeline]
        try:
            res = time_pipeline_loader(dm.train_dataloader(), a.loader_batches, 2, a.batch, a.device)
        except Exception as e:  # noqa: BLE001
            put({"kind": "error", "part": f"{pipeline} pipeline alone", "reason": _error_reason(e)})
            continue
        put({"kind": "pipeline_loader", "pipeline": pipeline, "dataset": str(dm.cfg.name), "setup_s": setup_s,
             "num_train": dm.num_train, "batch": a.batch, **res})
    if "device" in dms:
        try:
            put({"kind": "augment", **compare_augment(dms["device"][0], a.batch, a.device)})
        except Exception as e:  # noqa: BLE001
            put({"kind": "error", "part": "augmentation library comparison", "reason": _error_reason(e)})
    dms.clear()


def compare_augment(dm, batch: int, device: str, reps: int = 9) -> Dict[str, Any]:
    """fgssl's batched views vs kornia.augmentation's modules on the same cached batch (both views)."""
    import math

    import kornia
    import kornia.augmentation as K
    import torch

    from fgssl.bench import _sync
    from fgssl.data.device import hue_shift, view_params
    from fgssl.data.transforms import _blur_kernel

    pipe = dm.train_pipe
    size = pipe.size
    idx = torch.arange(batch) % len(pipe.split.samples)
    params = torch.stack([view_params(int(i) + 1, *pipe.sizes[int(i)].tolist(), pipe.knobs) for i in idx])
    k = pipe.knobs
    s = k.jitter_strength
    kornia_views = torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(k.min_scale, 1.0)),
        K.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s, p=k.jitter_p),
        K.RandomGrayscale(p=k.gray_p),
        K.RandomGaussianBlur((_blur_kernel(size),) * 2, (0.1, 2.0), p=k.blur_p),
        K.RandomHorizontalFlip(),
        K.Normalize(torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))),
    ).to(device)

    def ours():
        return pipe.views(idx, torch.stack([view_params(int(i) + 1, *pipe.sizes[int(i)].tolist(), pipe.knobs)
                                            for i in idx]))

    def ours_no_params():
        return pipe.views(idx, params)

    def theirs():
        x = pipe.gather(idx).float().div_(255.0)
        return kornia_views(x), kornia_views(x)

    x = pipe.views(idx, params)[0]  # a float batch for the hue step alone
    turns = torch.linspace(-0.1, 0.1, batch, device=x.device)
    fns = {"fgssl": ours, "fgssl_no_param_draw": ours_no_params, "kornia_augmentation": theirs,
           "hue_own": lambda: hue_shift(x, turns),
           "hue_kornia": lambda: kornia.enhance.adjust_hue(x, turns * (2 * math.pi))}
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(reps):  # interleaved, so a drifting load weighs on all alike
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    rate = {name: batch / statistics.median(v) for name, v in times.items()}
    hue_kornia, hue_own = rate["hue_kornia"], rate["hue_own"]
    return {"batch": batch, "image_size": size, "cache_side": pipe.side,
            "hue_kornia_images_per_s": hue_kornia, "hue_own_images_per_s": hue_own,
            "fgssl_images_per_s": rate["fgssl"], "fgssl_no_param_draw_images_per_s": rate["fgssl_no_param_draw"],
            "kornia_augmentation_images_per_s": rate["kornia_augmentation"]}


# ---------------------------------------------------------------------- peer (lightly)
def _lightly_modules(cfg, feat_dim: int, backbone):
    """MoCo v2 / SimSiam LightningModules assembled from lightly's heads and losses, sized like fgssl's."""
    import pytorch_lightning as pl
    import torch
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import MoCoProjectionHead, SimSiamPredictionHead, SimSiamProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    m = cfg.method
    lr = m.lr * cfg.data.batch_size / 256.0

    class LightlyMoCo(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = MoCoProjectionHead(feat_dim, m.proj_hidden or feat_dim, m.proj_dim)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)
            self.criterion = NTXentLoss(temperature=m.temperature, memory_bank_size=(int(m.queue_size), m.proj_dim))

        def training_step(self, batch, batch_idx):  # one-directional, as fgssl's method.symmetric=false
            (x_q, x_k), _ = batch
            update_momentum(self.backbone, self.backbone_momentum, m=m.ema_momentum)
            update_momentum(self.projection_head, self.projection_head_momentum, m=m.ema_momentum)
            q = self.projection_head(self.backbone(x_q).flatten(1))
            with torch.no_grad():
                k = self.projection_head_momentum(self.backbone_momentum(x_k).flatten(1))
            return self.criterion(q, k)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=m.sgd_momentum, weight_decay=m.weight_decay)

    class LightlySimSiam(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimSiamProjectionHead(feat_dim, m.proj_hidden or m.proj_dim, m.proj_dim)
            self.prediction_head = SimSiamPredictionHead(m.proj_dim, m.pred_hidden, m.proj_dim)
            self.criterion = NegativeCosineSimilarity()

        def training_step(self, batch, batch_idx):
            (x0, x1), _ = batch
            z0 = self.projection_head(self.backbone(x0).flatten(1))
            z1 = self.projection_head(self.backbone(x1).flatten(1))
            p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
            return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=m.sgd_momentum, weight_decay=m.weight_decay)

    return LightlyMoCo() if m.name == "mocov2" else LightlySimSiam()


def _torchvision_backbone(name: str):
    """The torchvision ResNet without its classifier (fgssl's ``backbone.stem=imagenet`` is the same net)."""
    import torch
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    return torch.nn.Sequential(*list(net.children())[:-1]), net.fc.in_features


def run_peer(a, conf, meter, put: Callable[[Dict[str, Any]], None]) -> None:
    import pytorch_lightning as pl
    import torch

    from fgssl.bench import SyntheticBatches, _error_reason, time_training

    try:
        import lightly  # noqa: F401
    except ImportError:
        put({"kind": "skip", "part": "peer", "reason": "lightly is not installed (pip install lightly)"})
        return
    for method in a.methods:
        cfg = _cfg(a, method, conf)
        if str(cfg.backbone.stem) != "imagenet":
            put({"kind": "skip", "method": method, "part": "peer", "reason": "the peer uses torchvision's stem"})
            continue
        try:
            rows: Dict[str, List[float]] = {"fgssl": [], "lightly": []}
            for _ in range(a.rounds):  # alternating, so a drifting load weighs on both alike
                batches = SyntheticBatches(a.batch, a.image_size, a.warmup + a.steps, torch.device(a.device))
                rows["fgssl"] += time_training(cfg, batches, a.steps, a.warmup, a.device, meter)["step_ms"]
                pl.seed_everything(int(cfg.seed), verbose=False)
                backbone, dim = _torchvision_backbone(str(cfg.backbone.name))
                peer = _lightly_modules(cfg, dim, backbone)
                batches = SyntheticBatches(a.batch, a.image_size, a.warmup + a.steps, torch.device(a.device))
                rows["lightly"] += time_module(peer, batches, a.steps, a.warmup, a.device,
                                               str(cfg.trainer.precision), meter)["step_ms"]
        except Exception as e:  # noqa: BLE001
            put({"kind": "error", "method": method, "part": "peer", "reason": _error_reason(e)})
            traceback.print_exc(file=sys.stderr)
            continue
        ms_f, ms_l = statistics.median(rows["fgssl"]), statistics.median(rows["lightly"])
        put({"kind": "peer", "method": method, "symmetric": bool(cfg.method.get("symmetric")),
             "ms_fgssl": ms_f, "ms_lightly": ms_l, "ratio": ms_f / ms_l, "lightly": _version("lightly")})
        print(f"fgssl.bench: {method} fgssl {ms_f:.1f} ms/step vs lightly-built {ms_l:.1f}", file=sys.stderr,
              flush=True)


def _version(pkg: str) -> str:
    from importlib.metadata import version

    try:
        return version(pkg)
    except Exception:  # noqa: BLE001
        return "?"


# ---------------------------------------------------------------------- report
def report_lines(records: List[Dict[str, Any]]) -> List[str]:
    out: List[str] = []
    pipes = [r for r in records if r["kind"] == "pipeline"]
    if pipes:
        out += ["", "real-data step / synthetic step by pipeline (targets: CPU <= 1.1x, GPU R50 224px bf16 <= 1.05x):"]
        out += [f"  {r['method']}{' (one-directional)' if r['method'] == 'mocov2' and not r['symmetric'] else ''} "
                f"{r['pipeline']}: {r['ratio']:.2f}x ({r['ms_real']:.1f} vs {r['ms_synthetic']:.1f} ms)"
                + (f", cache in {r['held_in']}" if r.get("held_in") else "")
                + (f", {r['workers']} workers" if r.get("workers") is not None else "") for r in pipes]
    loaders = [r for r in records if r["kind"] == "pipeline_loader"]
    if loaders:
        out += ["", "pipeline alone: " + ", ".join(
            f"{r['pipeline']} {r['images_per_s']:.0f} img/s ({r['ms_per_batch']:.1f} ms/batch, setup "
            f"{r['setup_s']:.1f} s)" for r in loaders)]
    for r in (r for r in records if r["kind"] == "augment"):
        out += ["", f"views of a batch of {r['batch']} ({r['cache_side']}px cache -> {r['image_size']}px): fgssl "
                    f"{r['fgssl_images_per_s']:.0f} img/s ({r['fgssl_no_param_draw_images_per_s']:.0f} without "
                    f"drawing the parameters), kornia.augmentation {r['kornia_augmentation_images_per_s']:.0f} img/s; "
                    f"hue step alone: fgssl's hue_shift {r['hue_own_images_per_s']:.0f} img/s, "
                    f"kornia.enhance.adjust_hue {r['hue_kornia_images_per_s']:.0f} img/s"]
    peers = [r for r in records if r["kind"] == "peer"]
    if peers:
        out += ["", "fgssl base step / lightly-built step (target <= 1.05x): " + ", ".join(
            f"{r['method']}{' one-directional' if r['method'] == 'mocov2' and not r['symmetric'] else ''} "
            f"{r['ratio']:.2f}x ({r['ms_fgssl']:.1f} vs {r['ms_lightly']:.1f} ms, lightly {r['lightly']})"
            for r in peers)]
    return out

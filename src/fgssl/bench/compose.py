"""The bench's configs and models come from the training code's own factories: the config is composed by
Hydra from the real ``conf/`` tree after :func:`fgssl.plugins.setup`, as ``train.py`` composes it; the values
derived from the data by :func:`fgssl.factory.resolve_derived` and the model by
:func:`fgssl.factory.build_model`, as ``fgssl.run`` builds them; the data by
:class:`fgssl.data.datamodule.FGVRDataModule`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List, Optional, Sequence

DEFAULT_CONF = Path(__file__).resolve().parents[3] / "conf"


class Skip(Exception):
    """A variant that cannot be built yet (its config group or module is missing)."""


def conf_dir(path: Optional[str] = None) -> Path:
    d = Path(path or os.environ.get("FGSSL_CONF") or DEFAULT_CONF)
    if not (d / "config.yaml").is_file():
        raise SystemExit(f"fgssl.bench: no config.yaml in {d}; pass --conf path/to/conf")
    return d


def compose(overrides: Sequence[str], conf: Path):
    """Compose ``conf/config.yaml`` with ``overrides``, as ``train.py`` would (:func:`fgssl.compose.compose`; the
    values are not range-checked here: a variant that cannot be composed is skipped, see :func:`compose_variant`)."""
    from fgssl.compose import compose as fgssl_compose

    return fgssl_compose(overrides, conf, check=False)


def compose_variant(overrides: List[str], variant_overrides: List[str], conf: Path):
    """Compose; a failure caused by the variant's own overrides becomes :class:`Skip`."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(overrides, conf)
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        groups = {o.split("=")[0].split(".")[0] for o in variant_overrides}
        if groups and any(g in msg for g in groups):
            raise Skip(f"config not available yet: {msg[:300]}") from None
        raise


def base_overrides(a: argparse.Namespace, method: str) -> List[str]:
    """The overrides of every run: method, backbone, size, batch, device, precision, then ``--set``."""
    ov = [
        f"method={method}", f"backbone={a.backbone}", f"data.image_size={a.image_size}",
        f"data.batch_size={a.batch}", f"trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}",
        f"trainer.precision={a.precision}", f"trainer.channels_last={str(a.channels_last).lower()}",
        "trainer.devices=1", "trainer.strategy=auto", "trainer.sync_batchnorm=false", "logger=none",
    ]
    if a.workers is not None:
        ov.append(f"data.num_workers={a.workers}")
    return ov + list(a.overrides)


def num_train(cfg) -> Optional[int]:
    """Training images of ``data=`` (None when it cannot be read: the synthetic step does not need it)."""
    from fgssl.data.readers import read_split

    try:
        return len(read_split(cfg.data.name, cfg.data.root, "train").samples)
    except Exception:  # noqa: BLE001
        return None


def resolve(cfg, n_train: Optional[int]) -> None:
    """The values training derives from the data (MoCo's queue size), by the training code's own function."""
    from omegaconf import open_dict

    from fgssl.factory import resolve_derived

    with open_dict(cfg):
        resolve_derived(cfg, n_train or 4096, 1)


def build_model(cfg):
    """The method with its regularizers, as training builds it."""
    from fgssl.factory import build_model as factory_build

    return factory_build(cfg)


def datamodule(cfg, pipeline: Optional[str] = None, device: Optional[str] = None):
    """The training datamodule of ``cfg`` (``pipeline`` forces ``data.pipeline``), set up."""
    from omegaconf import open_dict

    from fgssl.data.datamodule import FGVRDataModule

    if pipeline is not None:
        with open_dict(cfg):
            cfg.data.pipeline = pipeline
    dm = FGVRDataModule(cfg.data, cfg.eval, None, 1)
    dm.announce = False  # stdout carries the JSON lines; the records say where the cache is held
    dm.setup()
    if device is not None:
        dm.use_device(device)
    return dm


def error_reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:500]


def is_missing_component(e: BaseException) -> bool:
    return isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("fgssl")

"""SSL methods. Each one is a module here with its LightningModule, plus its config dataclass and one
``register_method`` line below (light: composing a config imports no torch). ``build_method(cfg)`` returns the
method named by ``cfg.method.name``; regularizers are attached by :func:`fgssl.factory.build_model`.

Adding a method: ``methods/<name>.py`` (a :class:`~fgssl.methods.base.SSLMethod`), its dataclass and
registration line here, and ``conf/method/<name>.yaml`` (``defaults: [<name>_schema, _self_]``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

from fgssl.config import METHODS, MethodConfig, bounded, register_method
from fgssl.errors import ConfigError


@dataclass
class MoCoV2Config(MethodConfig):
    name: str = "mocov2"
    temperature: float = bounded(0.2, gt=0)
    #: EMA momentum of the key encoder.
    ema_momentum: float = bounded(0.999, ge=0, le=1)
    #: Queue length K; null = resolved by the method from the data (``MoCoV2.resolve_config``):
    #: min(65536, largest multiple of the global batch <= the train size: one epoch of keys).
    queue_size: Optional[int] = bounded(None, ge=1)
    #: Symmetrised InfoNCE (both views as query and key). false = one-directional, as the MoCo v2
    #: and LCR code (one online pass with backward per step instead of two).
    symmetric: bool = False
    #: Shuffle BN on one device: BatchNorm over this many interleaved groups of the batch (the MoCo
    #: papers' per-GPU BN), keys shuffled before the key encoder (nets/split_bn.py); 1 = plain BN.
    bn_splits: int = bounded(1, ge=1)


@dataclass
class SimSiamConfig(MethodConfig):
    name: str = "simsiam"
    lr: float = bounded(0.05, gt=0)
    proj_dim: int = bounded(2048, ge=1)
    pred_hidden: int = bounded(512, ge=1)
    #: Keep the predictor at a fixed lr (SimSiam paper, Sec. 4.1).
    fixed_pred_lr: bool = True


register_method("mocov2", MoCoV2Config, "fgssl.methods.mocov2:MoCoV2")
register_method("simsiam", SimSiamConfig, "fgssl.methods.simsiam:SimSiam")


def method_class(name: str) -> type:
    if name not in METHODS:
        raise ConfigError(f"method.name={name!r} is unknown; choose one of {sorted(METHODS)}")
    module, cls = METHODS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(cfg):
    """The method named by ``cfg.method.name`` (no regularizer attached; see :func:`fgssl.factory.build_model`)."""
    return method_class(str(cfg.method.name))(cfg)

"""SSL methods. ``build_method(cfg)`` returns the LightningModule named by ``cfg.method.name``."""

from __future__ import annotations

from omegaconf import DictConfig

from fgssl.errors import FgsslError


def method_registry():
    from fgssl.methods.mocov2 import MoCoV2
    from fgssl.methods.simsiam import SimSiam

    return {"mocov2": MoCoV2, "simsiam": SimSiam}


def build_method(cfg: DictConfig):
    """Instantiate the method, then attach the regularizers named in the config."""
    from fgssl.fgvr import build_regularizers

    reg = method_registry()
    if cfg.method.name not in reg:
        raise FgsslError(f"method.name={cfg.method.name!r} is unknown; choose one of {sorted(reg)}")
    method = reg[cfg.method.name](cfg)
    for r in build_regularizers(cfg, method):
        method.regularizers.append(r)
    return method

"""Build a model from a composed config: the one factory that training, evaluation, figures, the notebook
and the benchmark share. It resolves the values derived from the data, builds the method named by
``method.name`` and attaches every regularizer whose group selects it (``synthesis=syn``, ``rationale=lcr``,
or a plug-in's group)."""

from __future__ import annotations

import importlib
from typing import List, Optional, Tuple

from omegaconf import DictConfig

from fgssl.config.registry import RegularizerSpec, regularizer_specs
from fgssl.errors import ConfigError
from fgssl.methods import method_class


def _class(target: str) -> type:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def attached(cfg: DictConfig) -> List[Tuple[RegularizerSpec, type]]:
    """The registered regularizers this config attaches, with their classes (group order)."""
    out = []
    for spec in regularizer_specs():
        group = spec.group
        if group not in cfg:
            continue
        name = str(cfg[group].name)
        if name == spec.option:
            out.append((spec, _class(spec.target)))
        elif name != "none":
            raise ConfigError(f"{group}.name={name!r} must be 'none' or {spec.option!r}")
    return out


def labels(cfg: DictConfig) -> List[str]:
    """The attached regularizers' short labels (``["SYN", "LCR"]``), for tables and figures."""
    return [spec.label for spec, _ in attached(cfg)]


def resolve_derived(cfg: DictConfig, num_train: int, world_size: int = 1) -> None:
    """Fill in the values derived from the data, in place (the saved config records them): first what an
    attached regularizer decides (LCR faithful: K = 65,536), then the method's own (MoCo's queue size)."""
    for spec, cls in attached(cfg):
        cls.resolve_config(cfg, cfg[spec.group])
    method_class(str(cfg.method.name)).resolve_config(cfg, int(num_train), int(world_size))


def build_model(cfg: DictConfig, num_train: Optional[int] = None, world_size: int = 1):
    """The method with its regularizers; with ``num_train``, :func:`resolve_derived` first."""
    if num_train is not None:
        resolve_derived(cfg, num_train, world_size)
    regs = attached(cfg)
    method = method_class(str(cfg.method.name))(cfg)
    for spec, cls in regs:
        method.regularizers.append(cls(cfg[spec.group], method))
    return method

"""Where methods and regularizers register their config, and the root schema assembled from them.

A method registers its name, its config dataclass (a :class:`~fgssl.config.schema.MethodConfig` subclass) and
where its class lives; a regularizer registers its config group (``synthesis``, ``rationale``, ...), its
dataclass, its option's YAML and where its class lives. Classes are named as ``"module:Class"`` strings and
imported only when a model is built, so composing and checking a config never imports torch.

:func:`register_configs` then puts everything in Hydra's ConfigStore:

* ``fgssl_schema``: the root (:class:`~fgssl.config.schema.BaseConfig` plus one field per regularizer group);
* ``method/<name>_schema``: each method's dataclass (``conf/method/<name>.yaml`` extends it);
* ``<group>/none`` and ``<group>/<option>``: each regularizer's options, and ``fgssl_regularizers``, a defaults
  list that puts every group at ``none`` (``conf/config.yaml`` includes it), so ``synthesis=syn`` and a
  plug-in's ``<group>=<option>`` work without ``+`` and without editing the root config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from fgssl.config.schema import BaseConfig, MethodConfig
from fgssl.errors import ConfigError


@dataclass(frozen=True)
class MethodSpec:
    name: str
    schema: type
    #: ``"package.module:Class"`` of the LightningModule.
    target: str


@dataclass(frozen=True)
class RegularizerSpec:
    #: The config group and root key (``synthesis``); ``<group>.name`` selects the option.
    group: str
    #: The option that attaches it (``syn``); ``none`` (the default) attaches nothing.
    option: str
    schema: type
    #: ``"package.module:Class"`` of the :class:`~fgssl.methods.base.Regularizer`; built as ``Class(cfg, method)``.
    target: str
    #: Short label in tables and figures (``+SYN``).
    label: str
    #: YAML of the option (its documented defaults), or None for the dataclass defaults with ``name=option``.
    yaml: Optional[Path] = None
    #: Attach order (ties by group name): the order in which the loss terms are added and the parameter
    #: groups listed. SYN is 10, LCR 20; a plug-in without one comes after them.
    order: int = 100


METHODS: Dict[str, MethodSpec] = {}
REGULARIZERS: Dict[str, RegularizerSpec] = {}
_ROOT: Dict[Tuple, type] = {}


def register_method(name: str, schema: type, target: str) -> None:
    if not (dataclasses.is_dataclass(schema) and issubclass(schema, MethodConfig)):
        raise TypeError(f"method {name!r}: its schema must be a dataclass extending MethodConfig")
    METHODS[name] = MethodSpec(name, schema, target)


def register_regularizer(group: str, option: str, schema: type, target: str, label: str,
                         yaml: Optional[Path] = None, order: int = 100) -> None:
    """Make ``<group>=<option>`` a config choice that attaches ``target`` to any method (one call per plug-in)."""
    if group in BaseConfig.__dataclass_fields__:
        raise ValueError(f"regularizer group {group!r} clashes with the root key {group!r}")
    if not dataclasses.is_dataclass(schema) or "name" not in schema.__dataclass_fields__:
        raise TypeError(f"regularizer {group}={option}: its schema must be a dataclass with a 'name' field")
    REGULARIZERS[group] = RegularizerSpec(group, option, schema, target, label, yaml, order)


def root_schema() -> type:
    """The root dataclass: the base groups plus one field per registered regularizer group."""
    key = tuple((g, s.schema) for g, s in sorted(REGULARIZERS.items()))
    if key not in _ROOT:
        fields = [(g, schema, field(default_factory=schema)) for g, schema in key]
        _ROOT[key] = make_dataclass("Config", fields, bases=(BaseConfig,))
    return _ROOT[key]


def regularizer_specs() -> Tuple[RegularizerSpec, ...]:
    """The registered regularizers in attach order."""
    return tuple(sorted(REGULARIZERS.values(), key=lambda s: (s.order, s.group)))


def method_schema(name: Optional[str]) -> type:
    """The config dataclass of method ``name`` (the base :class:`MethodConfig` when unknown or None)."""
    spec = METHODS.get(str(name)) if name is not None else None
    return spec.schema if spec is not None else MethodConfig


def option_node(spec: RegularizerSpec) -> Any:
    from omegaconf import OmegaConf

    node = OmegaConf.structured(spec.schema(name=spec.option))
    if spec.yaml is not None:
        try:
            node = OmegaConf.merge(node, OmegaConf.load(spec.yaml))
        except Exception as e:  # noqa: BLE001 - a plug-in's YAML that does not fit its schema
            raise ConfigError(f"{spec.yaml}: does not fit {spec.schema.__name__}: {str(e).splitlines()[0]}") from None
    return node


def register_configs() -> None:
    """Put the schema, every method's schema and every regularizer's options into Hydra's ConfigStore, and
    register the ``fgssl_slug`` resolver. Call :func:`fgssl.plugins.setup` instead: it loads the plug-ins first."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from fgssl.config.schema import run_slug

    if not OmegaConf.has_resolver("fgssl_slug"):
        OmegaConf.register_new_resolver("fgssl_slug", lambda s: run_slug(str(s or "")))
    cs = ConfigStore.instance()
    cs.store(name="fgssl_schema", node=root_schema())
    for spec in METHODS.values():
        cs.store(group="method", name=f"{spec.name}_schema", node=spec.schema)
    for spec in REGULARIZERS.values():
        cs.store(group=spec.group, name="none", node=spec.schema(name="none"))
        cs.store(group=spec.group, name=spec.option, node=option_node(spec))
    cs.store(name="fgssl_regularizers", node={"defaults": [{f"/{g}": "none"} for g in sorted(REGULARIZERS)]})


def structured(method: Optional[str] = None) -> Any:
    """The root schema as an OmegaConf node, its ``method`` typed as method ``method``'s dataclass."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(root_schema())
    if method is not None:
        node = OmegaConf.merge(node, {"method": OmegaConf.structured(method_schema(method))})
    return node


def fit_saved(saved: Any) -> Any:
    """A saved resolved config laid over the schema. A key added to fgssl since it was written takes its
    default (which keeps the old behaviour); a config written before method configs were per method also
    carries the other methods' keys (unused by its method), which are dropped."""
    from omegaconf import OmegaConf

    name = str(saved.method.name) if "method" in saved and "name" in saved.method else None
    if name is not None:
        own = set(method_schema(name).__dataclass_fields__)
        others = {k for s in METHODS.values() for k in s.schema.__dataclass_fields__} - own
        for k in [k for k in saved.method if k in others]:
            del saved.method[k]
    return OmegaConf.merge(structured(name), saved)

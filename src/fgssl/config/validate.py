"""The one validation layer: every value of a composed config is checked before anything runs.

* Types and choices: the schema types every key; choices are ``StrEnum`` types (:mod:`fgssl.config.choices`)
  or a ``choices`` tuple in the field's metadata. OmegaConf enforces them while Hydra composes; a bad value on
  the command line is caught earlier still, by :func:`check_override`, with the same one-line message.
* Ranges: ``bounds`` in a field's metadata (:func:`fgssl.config.schema.bounded`), checked by :func:`validate`.

Every failure is a :class:`~fgssl.errors.ConfigError` whose message names the key, e.g.
``eval.protocol='fsat' must be one of: fast, linear_sgd``.
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from fgssl.errors import ConfigError

_OPS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
        "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def _enum_of(tp: Any) -> Optional[type]:
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and issubclass(t, Enum):
            return t
    return None


def field_rules(schema: type) -> Iterator[Tuple[str, Any, Dict[str, Any]]]:
    """``(name, type, rules)`` of every field of the dataclass ``schema`` (rules: ``bounds``/``choices``)."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        rules = dict(f.metadata)
        enum = _enum_of(hints[f.name])
        if enum is not None:
            rules["choices"] = tuple(m.value for m in enum)
        yield f.name, hints[f.name], rules


def check_value(key: str, value: Any, rules: Dict[str, Any]) -> None:
    """``value`` of ``key`` against its ``choices`` and ``bounds`` (None always passes)."""
    if value is None:
        return
    choices: Sequence[str] = rules.get("choices", ())
    if choices and str(value) not in choices:
        raise ConfigError(f"{key}={value!r} must be one of: {', '.join(choices)}")
    for op, bound in rules.get("bounds", {}).items():
        sym, ok = _OPS[op]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value, bound):
            raise ConfigError(f"{key}={value} must be {sym} {bound}")


def validate(cfg: Any, schema: Optional[type] = None, prefix: str = "") -> None:
    """Check every key of the composed ``cfg`` that has a rule; a nested group is checked against its actual
    dataclass (``method`` against the chosen method's, e.g. ``MoCoV2Config``)."""
    from omegaconf import DictConfig, OmegaConf

    if schema is None:
        schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return
    for name, _tp, rules in field_rules(schema):
        if name not in cfg:
            continue
        node = cfg._get_node(name)
        key = f"{prefix}{name}"
        if isinstance(node, DictConfig):
            if not node._is_missing() and not node._is_none():
                validate(node, OmegaConf.get_type(node), f"{key}.")
            continue
        if node._is_missing() or OmegaConf.is_interpolation(cfg, name):
            continue
        check_value(key, cfg[name], rules)


def type_error_line(key: str, value: Any, error: Exception) -> ConfigError:
    """OmegaConf's type/choice error for ``key=value`` as one line naming the key."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    first = first.replace("Invalid value", "invalid value").rstrip(".")
    return ConfigError(f"{key}={value!r}: {first}")


def check_override(key: str, value: Any, schema: type, field_name: str) -> None:
    """A command-line ``key=value`` against field ``field_name`` of the dataclass ``schema``: its type (an int
    key given ``abc``), its choices and its range, before Hydra composes anything."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = OmegaConf.structured(schema)
    try:
        node[field_name] = value
    except OmegaConfBaseException as e:
        raise type_error_line(key, value, e) from None
    rules = {n: r for n, _, r in field_rules(schema)}[field_name]
    check_value(key, node[field_name], rules)

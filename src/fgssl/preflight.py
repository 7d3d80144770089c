"""Checks that need no model, run before anything heavy is imported or built.

The entry points (``train.py``, ``evaluate.py``, ``figures.py``) call :func:`check_cli_keys` on the
command line before Hydra composes it, and :func:`preflight` on the composed config before
importing Lightning (about 6 s on a small CPU): a typo, a missing path, a batch larger than the
dataset or a missing GPU then costs a fraction of a second and prints one ``fgssl error:`` line.
This module imports nothing heavier than OmegaConf (torch only for the device check).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
import zipfile
from pathlib import Path
from typing import Any, List, Optional, Sequence

from omegaconf import DictConfig

from fgssl.config.registry import REGULARIZERS, method_schema, root_schema
from fgssl.config.validate import check_override, validate
from fgssl.data.checks import check_batch_size  # noqa: F401 - re-exported: preflight's check
from fgssl.errors import ConfigError, FgsslError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: ``evaluate.py ckpt=<floor>``: the non-learned baselines, evaluated without a checkpoint.
FLOORS = ("random", "colorhist")


# ---------------------------------------------------------------------- keys
def _schema_node(path: Sequence[str], method: Optional[str] = "mocov2") -> Optional[Any]:
    """The dataclass type at ``path`` in the schema (``method`` typed as that method's dataclass), ``Any``
    for a leaf, None if the path is unknown."""
    node: Any = root_schema()
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(node):
            # a leaf (or a free-form value such as trainer.devices or a list): nothing below it is checked
            return Any
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return None
        node = method_schema(method) if (i == 0 and part == "method") else typing.get_type_hints(node)[part]
    return node


def _known_below(path: Sequence[str], method: Optional[str] = "mocov2") -> List[str]:
    node = _schema_node(path, method)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def unknown_key_error(key: str, method: Optional[str] = "mocov2") -> ConfigError:
    """The one error for a key the schema does not know (``data.rot``, ``+data.rot``, ``method.temprature``)."""
    parts = key.split(".")
    i = 0
    while i < len(parts) and _schema_node(parts[: i + 1], method) is not None:
        i += 1
    parent = ".".join(parts[:i])
    known = _known_below(parts[:i], method)
    close = difflib.get_close_matches(parts[i], known, n=1, cutoff=0.6) if i < len(parts) else []
    hint = f"did you mean {'.'.join([*parts[:i], close[0]])}? " if close else ""
    where = f"'{parent}'" if parent else "the top level"
    if parent == "method" and method:
        where = f"'method' ({method})"
    return ConfigError(f"unknown config key {key}: {where} has no key '{parts[i]}'; {hint}"
                       f"`python train.py --cfg job` prints every key")


def group_names() -> List[str]:
    """The config groups a command line chooses from (``method=``, ``synthesis=``, ...): the folders of
    ``conf/`` (Hydra's own ``hydra/`` aside) and every registered regularizer's group."""
    conf = [p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"]
    return sorted({*conf, *REGULARIZERS})


def _is_group(key: str) -> bool:
    return key in group_names() or (CONF_DIR / key.replace(".", "/")).is_dir()


def group_options(group: str) -> List[str]:
    """The options of config group ``group``: its YAML files under ``conf/``, or a plug-in's ``none``/option."""
    if group in REGULARIZERS:
        return sorted({"none", REGULARIZERS[group].option})
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _check_option(group: str, o: Any) -> None:
    """``group=option`` names an existing option (Hydra's own message spans many lines)."""
    options = group_options(group)
    for v in _values(o):
        if v is not None and isinstance(v, str) and v not in options:
            raise ConfigError(f"{group}={v}: no such option; choose one of: {', '.join(options)}")


def _values(o: Any) -> List[Any]:
    """The plain value(s) of a parsed override (each choice of a ``-m`` sweep); [] for anything else."""
    from hydra.core.override_parser.types import ChoiceSweep

    v = o.value()
    if isinstance(v, ChoiceSweep):
        return list(v.list)
    if o.is_sweep_override():
        return []
    return [v]


def _check_value(key: str, o: Any, method: Optional[str]) -> None:
    parts = key.split(".")
    parent = _schema_node(parts[:-1], method)
    if not dataclasses.is_dataclass(parent) or dataclasses.is_dataclass(_schema_node(parts, method)):
        return
    for v in _values(o):
        if isinstance(v, (str, int, float, bool)) or v is None:
            check_override(key, v, parent, parts[-1])


def check_cli_keys(argv: Sequence[str]) -> None:
    """Reject a command-line override whose key the schema does not know, with or without ``+``/``++``.

    Hydra would say ``Could not override 'data.rot'. To append to your config use +data.rot=1``, and
    ``+data.rot=1`` would then be accepted silently; both get :func:`unknown_key_error` instead.
    Anything this cannot parse is left to Hydra.
    """
    try:
        from hydra._internal.utils import get_args_parser
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args, _ = get_args_parser().parse_known_args(list(argv))
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:  # noqa: BLE001 - malformed input: Hydra's own parser reports it
        return
    method = next((str(o.value()) for o in overrides if o.key_or_group == "method" and not o.is_sweep_override()),
                  "mocov2")
    for o in overrides:
        key = o.key_or_group
        if key in group_names() and not o.package and not o.is_delete():
            _check_option(key, o)
        if key.startswith("hydra") or o.is_delete() or _is_group(key) or o.package:
            continue
        if _schema_node(key.split("."), method) is None:
            raise unknown_key_error(key, method)
        _check_value(key, o, method)


def check_known_keys(cfg: DictConfig, path: Sequence[str] = (), method: Optional[str] = None) -> None:
    """Every key of the composed ``cfg`` is in the schema (``+key=...`` cannot add one)."""
    if method is None and not path:
        method = str(cfg.method.name) if "method" in cfg and "name" in cfg.method else None
    node = _schema_node(path, method)
    if not dataclasses.is_dataclass(node):
        return
    for key in cfg.keys():
        sub = [*path, str(key)]
        if _schema_node(sub, method) is None:
            raise unknown_key_error(".".join(sub), method)
        value = cfg._get_node(key)
        if isinstance(value, DictConfig) and not value._is_missing() and not value._is_none():
            check_known_keys(value, sub, method)


# ---------------------------------------------------------------------- paths, sizes, devices
def _need_file(what: str, value: Optional[str]) -> Optional[Path]:
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.is_file():
        raise FgsslError(f"{what}={value}: file not found" + (f" ({p.resolve()})" if not p.is_absolute() else ""))
    return p


def check_checkpoint_file(what: str, value: str) -> Path:
    """``value`` is a file that looks like a fgssl checkpoint (a torch zip archive with a config.yaml beside it)."""
    p = _need_file(what, value)
    assert p is not None
    if not zipfile.is_zipfile(p):
        raise FgsslError(f"{what}={p}: not a fgssl checkpoint (not a PyTorch checkpoint archive; train.py writes "
                         f"<run dir>/checkpoints/last.ckpt)")
    return p


def check_data(cfg: DictConfig) -> int:
    """The dataset's train split can be listed and is larger than one batch; returns its size."""
    from fgssl.data.readers import read_split

    n = len(read_split(cfg.data.name, cfg.data.root, "train").samples)
    read_split(cfg.data.name, cfg.data.root, "test")
    check_batch_size(cfg.data, n, 1)
    return n


def check_device(cfg: DictConfig) -> None:
    """No GPU, or fewer than ``trainer.devices``: one line naming the key and ``trainer=cpu``."""
    from fgssl.lifecycle import check_devices

    check_devices(cfg)


def preflight(cfg: DictConfig, entry: str) -> None:
    """All cheap checks for ``entry`` (``train``, ``evaluate`` or ``figures``) on the composed config."""
    check_known_keys(cfg)
    validate(cfg)  # every value against its choices and range (fgssl.config.validate)
    if entry == "train":
        check_device(cfg)  # first: a missing device is found before anything is read
        _need_file("backbone.weights", cfg.backbone.weights)
        check_data(cfg)
    elif entry == "evaluate":
        if not cfg.ckpt:
            raise FgsslError("evaluate.py needs ckpt=PATH (a train.py checkpoint), ckpt=random or ckpt=colorhist")
        if cfg.ckpt in FLOORS:
            check_data(cfg)
        else:
            check_checkpoint_file("ckpt", cfg.ckpt)
    elif entry == "figures":
        f = cfg.figures
        if not cfg.ckpt and not f.sweep_dir:
            raise FgsslError("figures.py needs ckpt=PATH (and/or figures.sweep_dir=MULTIRUN_DIR)")
        if cfg.ckpt:
            check_checkpoint_file("ckpt", cfg.ckpt)
        for i, c in enumerate(f.compare):
            check_checkpoint_file(f"figures.compare[{i}]", c)
        if f.sweep_dir and not Path(f.sweep_dir).expanduser().is_dir():
            raise FgsslError(f"figures.sweep_dir not found: {Path(f.sweep_dir).expanduser()}")
    else:  # pragma: no cover - programming error
        raise ValueError(entry)



# ---------------------------------------------------------------------- entry points
#: ``evaluate.py`` and ``figures.py`` write next to their checkpoint (or where asked): Hydra's run dir,
#: its ``.hydra/`` copy of the config and its log file would be stray folders under ``outputs/``.
NO_HYDRA_OUTPUTS = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none")


def prepare_argv(argv: List[str], entry: str) -> None:
    """Before Hydra sees ``argv`` (changed in place): reject unknown keys at once (one ``fgssl error:``
    line, exit 2) and, for ``evaluate``/``figures``, turn Hydra's own outputs off unless asked for."""
    from fgssl.errors import run_or_exit

    run_or_exit(check_cli_keys, argv[1:])
    from fgssl.cluster import check_launcher_keys

    run_or_exit(check_launcher_keys, argv[1:])  # hydra/launcher= and hydra.launcher.* (submitit's keys)
    if entry != "train":
        given = {a.split("=", 1)[0].lstrip("+~") for a in argv[1:]}
        argv[1:1] = [o for o in NO_HYDRA_OUTPUTS if o.split("=", 1)[0] not in given]

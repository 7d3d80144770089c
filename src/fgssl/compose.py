"""Compose the Hydra config tree from Python, as ``train.py`` does from the command line.

The one way the notebook, the tests and the benchmark build a config::

    from fgssl.compose import compose
    cfg = compose(["method=simsiam", "debug=smoke"], out_dir="outputs/try")

It loads the plug-ins and registers the config first (:func:`fgssl.plugins.setup`), as the entry points do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from omegaconf import DictConfig, open_dict

from fgssl.errors import FgsslError

#: the ``conf/`` tree of this checkout (``$FGSSL_CONF`` points elsewhere)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CONF_ENV = "FGSSL_CONF"


def conf_dir(path: Optional[Union[str, Path]] = None) -> Path:
    """The config tree: ``path``, else ``$FGSSL_CONF``, else this checkout's ``conf/``."""
    d = Path(path or os.environ.get(CONF_ENV) or CONF_DIR).expanduser()
    if not (d / "config.yaml").is_file():
        raise FgsslError(f"no config.yaml in {d}; pass the conf/ folder of an fgssl checkout (or set ${CONF_ENV})")
    return d


def compose(overrides: Sequence[str] = (), conf: Optional[Union[str, Path]] = None,
            out_dir: Optional[Union[str, Path]] = None, return_hydra_config: bool = False,
            check: bool = True) -> DictConfig:
    """``conf/config.yaml`` with ``overrides`` (command-line syntax), checked against the schema as
    ``train.py`` checks it: every key exists, and (``check``) every value is within its choices and range
    (:func:`fgssl.config.validate`, one :class:`~fgssl.errors.ConfigError` naming the key). ``out_dir`` sets
    where a run writes (there is no Hydra run folder here). Hydra's global state is cleared before and
    after, so calls do not leak into each other."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fgssl.plugins import setup

    setup()  # the methods, regularizers and plug-ins register their config
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir(conf).resolve()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides),
                                return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()
    if check:
        from fgssl.config import validate

        validate(cfg)
    if out_dir is not None:
        with open_dict(cfg):
            cfg.out_dir = str(out_dir)
    return cfg

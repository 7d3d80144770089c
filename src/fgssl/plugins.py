"""Loading the plug-ins and registering the config: call :func:`setup` before composing a config.

Methods register in :mod:`fgssl.methods`; every sub-package of :mod:`fgssl.regularizers` registers itself when
imported; a package outside fgssl does the same through an ``fgssl.plugins`` entry point (a module imported
here, e.g. ``[project.entry-points."fgssl.plugins"] my_reg = "my_pkg.my_reg"``). Importing them costs no torch
import: a plug-in's ``__init__`` holds its config and names its classes as strings.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import List

import fgssl.methods  # noqa: F401 - registers the built-in methods
import fgssl.regularizers
from fgssl.config import register_configs
from fgssl.errors import FgsslError

ENTRY_POINT_GROUP = "fgssl.plugins"
_LOADED: List[str] = []


def load() -> List[str]:
    """Import every built-in regularizer sub-package and every installed plug-in; returns their module names."""
    if _LOADED:
        return list(_LOADED)
    names = [f"fgssl.regularizers.{m.name}" for m in pkgutil.iter_modules(fgssl.regularizers.__path__) if m.ispkg]
    for name in sorted(names):
        importlib.import_module(name)
        _LOADED.append(name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            importlib.import_module(ep.value.split(":")[0])
        except Exception as e:  # noqa: BLE001 - a broken plug-in is named, not a traceback
            raise FgsslError(f"fgssl plug-in {ep.name!r} ({ep.value}) failed to load: "
                             f"{type(e).__name__}: {e}") from None
        _LOADED.append(ep.value)
    return list(_LOADED)


def setup() -> None:
    """Load the plug-ins, then register the schema and every option in Hydra's ConfigStore."""
    load()
    register_configs()

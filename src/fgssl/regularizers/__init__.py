"""Regularizers that attach to any method: each is a sub-package here (``syn/``, ``lcr/``) holding its config
dataclass and YAML, its :class:`~fgssl.methods.base.Regularizer`, its callbacks, and one
``register_regularizer`` line in its ``__init__.py``. :func:`fgssl.plugins.load` imports every sub-package (and
any installed plug-in), so nothing else in fgssl names them.

Adding one: copy ``syn/`` or ``lcr/`` as ``<name>/``, give it a new config group, and register it. Outside the
source tree, a package declaring an ``fgssl.plugins`` entry point does the same (docs/architecture.md).
"""

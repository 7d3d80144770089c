"""The configuration floor: the schema (:mod:`.schema`), its choices (:mod:`.choices`), the registry that
methods and regularizers add their config to (:mod:`.registry`) and the one validation layer
(:mod:`.validate`). Nothing here imports torch or any other fgssl package but :mod:`fgssl.errors`."""

from fgssl.config.registry import (
                                   METHODS,
                                   REGULARIZERS,
                                   method_schema,
                                   register_configs,
                                   register_method,
                                   register_regularizer,
                                   root_schema,
)
from fgssl.config.schema import (
                                   BackboneConfig,
                                   BaseConfig,
                                   DataConfig,
                                   EvalConfig,
                                   FiguresConfig,
                                   LoggerConfig,
                                   MethodConfig,
                                   TrainerConfig,
                                   bounded,
                                   run_slug,
)
from fgssl.config.validate import validate

__all__ = [
    "BaseConfig", "DataConfig", "BackboneConfig", "MethodConfig", "TrainerConfig", "LoggerConfig", "EvalConfig",
    "FiguresConfig", "bounded", "run_slug", "METHODS", "REGULARIZERS", "register_method", "register_regularizer",
    "root_schema", "method_schema", "register_configs", "validate",
]

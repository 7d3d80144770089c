"""The closed sets of values a config key may take, as ``StrEnum`` types of the schema.

OmegaConf checks an enum-typed key when the config is composed (a misspelt ``eval.protocol`` fails before
anything runs) and :mod:`fgssl.config.validate` turns its message into one ``fgssl error:`` line naming the
key. A ``StrEnum`` member *is* its string (``Protocol.fast == "fast"``, f-strings print ``fast``), so code
compares against plain strings.
"""

from __future__ import annotations

from enum import StrEnum


class Dataset(StrEnum):
    cub53 = "cub53"
    cub = "cub"
    cars = "cars"
    aircraft = "aircraft"
    imagefolder = "imagefolder"


class Pipeline(StrEnum):
    auto = "auto"
    device = "device"
    workers = "workers"


class OnBadImage(StrEnum):
    skip = "skip"
    error = "error"


class Backbone(StrEnum):
    resnet18 = "resnet18"
    resnet50 = "resnet50"


class Stem(StrEnum):
    imagenet = "imagenet"
    small = "small"


class Accelerator(StrEnum):
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"
    auto = "auto"


class Logger(StrEnum):
    wandb = "wandb"
    csv = "csv"
    none = "none"


class WandbMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class Protocol(StrEnum):
    fast = "fast"
    linear_sgd = "linear_sgd"


class Feature(StrEnum):
    auto = "auto"
    gap = "gap"

"""The closed sets of values a config key may take, as ``StrEnum`` types of the schema.

OmegaConf checks an enum-typed key when the config is composed (a misspelt ``eval.protocol`` fails before
anything runs) and :mod:`fgssl.config.validate` turns its message into one ``fgssl error:`` line naming the
key. A ``StrEnum`` member *is* its string (``Protocol.fast == "fast"``, f-strings print ``fast``), so code
compares against plain strings.
"""

from __future__ import annotations

from enum import StrEnum

# the functional form: each member's value is its name
Dataset = StrEnum("Dataset", "cub53 cub cars aircraft imagefolder")
Pipeline = StrEnum("Pipeline", "auto device workers")
OnBadImage = StrEnum("OnBadImage", "skip error")
Backbone = StrEnum("Backbone", "resnet18 resnet50")
Stem = StrEnum("Stem", "imagenet small")
Accelerator = StrEnum("Accelerator", "cpu gpu cuda auto")
Logger = StrEnum("Logger", "wandb csv none")
WandbMode = StrEnum("WandbMode", "offline online disabled")
Protocol = StrEnum("Protocol", "fast linear_sgd")
Feature = StrEnum("Feature", "auto gap")

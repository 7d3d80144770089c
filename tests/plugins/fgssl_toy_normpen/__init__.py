"""A toy regularizer living entirely outside src/: a penalty on the feature norm, ``weight * mean (||z|| - target)^2``.

It is what a user's own plug-in looks like: this ``__init__`` holds its config and one registration line; the
class is in ``regularizer.py``; fgssl finds the package through an ``fgssl.plugins`` entry point
(tests/test_plugins.py installs one in a temporary folder) and ``normpen=on`` attaches it to any method.
"""

from __future__ import annotations

from dataclasses import dataclass

from fgssl.config import bounded, register_regularizer


@dataclass
class NormPenaltyConfig:
    name: str = "none"
    #: Weight of the penalty in the total loss.
    weight: float = bounded(0.1, ge=0)
    #: The feature norm the penalty pulls towards.
    target: float = bounded(1.0, ge=0)


register_regularizer("normpen", "on", NormPenaltyConfig, "fgssl_toy_normpen.regularizer:FeatureNormPenalty",
                     label="NORM")

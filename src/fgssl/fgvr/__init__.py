"""FGVR regularizers that attach to any method through the method contract.

``build_regularizers(cfg, method)`` reads ``cfg.synthesis.name`` (SYN) and
``cfg.rationale.name`` (LCR) and returns the modules to append to
``method.regularizers``. Methods never import this package's components.
"""

from __future__ import annotations

from typing import List

from omegaconf import DictConfig

from fgssl.errors import FgsslError


def build_regularizers(cfg: DictConfig, method) -> List:
    regs = []
    syn = cfg.synthesis.name
    if syn == "syn":
        from fgssl.fgvr.synthesis import SynthesisRegularizer

        regs.append(SynthesisRegularizer(cfg.synthesis, method))
    elif syn != "none":
        raise FgsslError(f"synthesis.name={syn!r} must be 'none' or 'syn'")
    lcr = cfg.rationale.name
    if lcr == "lcr":
        from fgssl.fgvr.rationale import RationaleRegularizer

        regs.append(RationaleRegularizer(cfg.rationale, method))
    elif lcr != "none":
        raise FgsslError(f"rationale.name={lcr!r} must be 'none' or 'lcr'")
    return regs

"""What the bench runs: methods, variants and their targets.

A variant is nothing but Hydra overrides, composed on the real ``conf/`` tree exactly like a training
command line; no code here knows a regularizer's class. The table holds ``base``, one variant per
*registered* regularizer (:func:`fgssl.config.register_regularizer`: its option name, ``syn``, ``lcr`` or a
plug-in's, with ``<group>=<option>``), ``both`` (all of them together) and named extras, so a new
regularizer appears here without an edit. Any other ``--variants`` item with an ``=`` is taken as literal
overrides joined by ``+`` (``rationale=lcr+rationale.weight=0.5``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

METHODS = ("mocov2", "simsiam")
DEFAULT_VARIANTS = ("base", "syn", "lcr", "both")
PRECISIONS = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}

#: Bench settings of a config group when a variant selects it: SYN at full cost from the first step (no nu
#: warm-up or ramp); its statistics warm-started from one batch instead of a whole epoch (not timed anyway).
FULL_COST = {"synthesis": ["synthesis.warmup_epochs=0", "synthesis.ramp_epochs=0", "synthesis.warm_start_batches=1"]}
#: Named extras (not in the default set): SYN's speed knob, pairs for a quarter of the batch.
EXTRAS: Dict[str, Tuple[str, List[str]]] = {"syn25": ("+SYN f=0.25", ["synthesis=syn", "synthesis.pair_fraction=0.25"])}
#: Targets from the issues (step time relative to the base method). SYN at the full batch: the pair is one
#: more SSL sample, so 2x is the floor (docs/method.md).
TARGETS = {"syn": {"time": 2.1}, "lcr": {"time": 1.1}}


def _with_settings(overrides: List[str]) -> List[str]:
    groups = {o.split("=", 1)[0] for o in overrides if "." not in o.split("=", 1)[0]}
    return overrides + [s for g in sorted(groups) for s in FULL_COST.get(g, [])]


def registered() -> Dict[str, Tuple[str, List[str]]]:
    """One variant per registered regularizer, in attach order: option -> ("+LABEL", ["group=option"])."""
    from fgssl.config.registry import regularizer_specs
    from fgssl.plugins import load

    load()
    return {spec.option: (f"+{spec.label}", [f"{spec.group}={spec.option}"]) for spec in regularizer_specs()}


def table() -> Dict[str, Tuple[str, List[str]]]:
    """Variant name -> (label, Hydra overrides)."""
    regs = registered()
    out: Dict[str, Tuple[str, List[str]]] = {"base": ("base", [])}
    out.update({name: (label, _with_settings(ov)) for name, (label, ov) in regs.items()})
    out["both"] = ("".join(lb for lb, _ in regs.values()), _with_settings([o for _, ov in regs.values() for o in ov]))
    out.update({name: (label, _with_settings(ov)) for name, (label, ov) in EXTRAS.items()})
    return out


VARIANTS = table()


def overrides_of(variant: str) -> List[str]:
    """The Hydra overrides of a variant: a table name, or literal overrides joined by ``+``."""
    if variant in VARIANTS:
        return list(VARIANTS[variant][1])
    return [o for o in variant.split("+") if o]


def label_of(variant: str) -> str:
    return VARIANTS[variant][0] if variant in VARIANTS else variant


def unknown(variant: str) -> Optional[str]:
    """Why ``variant`` is not runnable, or None."""
    if variant in VARIANTS or all("=" in o for o in overrides_of(variant)) and overrides_of(variant):
        return None
    return f"unknown variant {variant!r}; choose from {','.join(VARIANTS)} or give Hydra overrides joined by '+'"

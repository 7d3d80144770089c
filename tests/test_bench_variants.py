"""``fgssl.bench.variants``: variants are Hydra overrides only."""

from __future__ import annotations

from fgssl.bench import variants


def test_table_is_overrides_only():
    t = variants.VARIANTS
    assert t["base"] == ("base", [])
    assert t["lcr"][1] == ["rationale=lcr"]
    assert t["syn"][1][0] == "synthesis=syn" and "synthesis.warmup_epochs=0" in t["syn"][1]  # full cost at once
    assert set(t["both"][1]) == set(t["syn"][1]) | set(t["lcr"][1]) and t["both"][0] == "+SYN+LCR"
    assert "synthesis.pair_fraction=0.25" in t["syn25"][1]
    assert all(isinstance(o, str) and "=" in o for _, ov in t.values() for o in ov)


def test_literal_overrides_are_a_variant():
    assert variants.overrides_of("norm=feature+norm.weight=0.1") == ["norm=feature", "norm.weight=0.1"]
    assert variants.label_of("norm=feature") == "norm=feature"
    assert variants.unknown("norm=feature") is None and variants.unknown("syn") is None
    assert "unknown variant 'typo'" in variants.unknown("typo")


def test_a_registered_plug_in_regularizer_is_a_variant_without_an_edit(monkeypatch):
    """The toy plug-in of tests/plugins registers itself; the bench's table gains its variant (and ``both``
    includes it) with no edit to fgssl.bench."""
    from fgssl.config import REGULARIZERS, register_configs
    from test_plugins import PLUGIN_DIR

    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    import fgssl_toy_normpen  # noqa: F401 - its one registration line runs here

    try:
        t = variants.table()
        assert t["on"] == ("+NORM", ["normpen=on"])
        assert "normpen=on" in t["both"][1] and t["both"][0] == "+SYN+LCR+NORM"
    finally:
        REGULARIZERS.pop("normpen", None)
        register_configs()

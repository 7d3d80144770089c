"""One validation layer: every key of every group, given a bad value on the command line, fails before anything
runs with one ``ConfigError`` line that names the key; a bad value reaching the composed config (an experiment
file) fails in the preflight the same way."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import is_dataclass

import pytest

from conftest import ROOT, compose_cfg
from fgssl.config import METHODS, REGULARIZERS, root_schema
from fgssl.config.validate import field_rules, validate
from fgssl.errors import ConfigError
from fgssl.preflight import check_cli_keys

#: Keys whose every value of their type is acceptable (paths, names, free text, lists, devices); any other key
#: must have a rule (a type that rejects a wrong kind of value, a choice or a range).
FREE = {"data.root", "data.cache_dir", "backbone.weights", "method.name", "trainer.devices", "trainer.strategy",
        "logger.project", "logger.entity", "logger.group", "logger.tags", "eval.linear_wd_grid",
        "eval.sgd_milestones", "figures.compare", "figures.sweep_dir", "figures.sweep_method", "figures.out_dir",
        "name", "ckpt", "out_dir", "recipe"} | {f"{g}.name" for g in REGULARIZERS}


def _bad(tp, rules):
    """A value that the key's type, choices or range must reject (None: no rule to test)."""
    if rules.get("choices"):
        return "no_such_choice"
    bounds = rules.get("bounds", {})
    for op, b in bounds.items():
        return {"ge": b - 1, "gt": b, "le": b + 1, "lt": b}[op]
    base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    if base[0] is bool:
        return "maybe"
    if base[0] in (int, float):
        return "not_a_number"
    return None


def _leaves():
    """(override key, method option, type, rules) of every key of every group (each method's own keys)."""
    out = []
    for name, tp, rules in field_rules(root_schema()):
        if name == "method":
            for m, spec in METHODS.items():
                out += [(f"method.{k}", m, t, r) for k, t, r in field_rules(spec.schema)]
        elif is_dataclass(tp):
            out += [(f"{name}.{k}", None, t, r) for k, t, r in field_rules(tp)]
        else:
            out.append((name, None, tp, rules))
    return out


LEAVES = _leaves()


def test_every_key_has_a_rule_or_is_declared_free():
    unchecked = sorted({k for k, _, tp, rules in LEAVES if _bad(tp, rules) is None})
    assert set(unchecked) <= FREE, sorted(set(unchecked) - FREE)


@pytest.mark.parametrize("key,method,tp,rules", [x for x in LEAVES if _bad(x[2], x[3]) is not None],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_bad_value_is_one_line_naming_the_key(key, method, tp, rules):
    argv = [f"{key}={_bad(tp, rules)}"] + ([f"method={method}"] if method else [])
    group = key.split(".")[0]
    if group in REGULARIZERS:
        argv.append(f"{group}={REGULARIZERS[group].option}")
    with pytest.raises(ConfigError) as e:
        check_cli_keys(argv)
    msg = str(e.value)
    assert key in msg and "\n" not in msg, msg


def test_bad_value_from_a_config_file_fails_in_preflight():
    cfg = compose_cfg(["synthesis=syn"])
    cfg.synthesis.ratio = 1.5  # as an experiment file could set it: the type is right, the range is not
    with pytest.raises(ConfigError, match=r"synthesis.ratio=1.5 must be <= 1"):
        validate(cfg)


def test_misspelt_choice_stops_before_training(tmp_path):
    r = subprocess.run([sys.executable, "train.py", "eval.protocol=fsat", f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["fgssl error: eval.protocol='fsat': invalid value 'fsat', expected one "
                                             "of [fast, linear_sgd]"]
    assert not (tmp_path / "run").exists()

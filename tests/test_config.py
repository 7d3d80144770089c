"""Every option of every config group composes against the schema; unknown keys fail naming the key."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import CONF, ROOT, compose_cfg
from fgssl.compose import compose

#: groups the foundation must provide, with the options each must have at least
REQUIRED = {
    "data": {"cub53", "cub", "cars", "aircraft", "imagefolder"},
    "method": {"mocov2", "simsiam"},
    "backbone": {"resnet18", "resnet50"},
    "trainer": {"cpu", "gpu", "ddp"},
    "logger": {"wandb", "csv", "none"},
    "eval": {"default"},
    "debug": {"smoke"},
    "synthesis": {"none"},
    "rationale": {"none"},
}


def _options(group: str):
    from fgssl.preflight import group_options

    return group_options(group)  # conf/<group>/*.yaml, or a plug-in's none/option (ConfigStore)


def _all_options():
    from fgssl.config import REGULARIZERS

    groups = sorted({p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith(".")} | set(REGULARIZERS))
    return [(g, o) for g in groups for o in _options(g)]


def test_required_groups_and_options_exist():
    for group, opts in REQUIRED.items():
        assert opts <= set(_options(group)), (group, _options(group))
    assert _options("experiment"), "conf/experiment/ has at least one experiment"


@pytest.mark.parametrize("group,option", _all_options())
def test_every_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # interpolations resolve too
    assert set(resolved) >= {"data", "method", "backbone", "trainer", "logger", "eval", "synthesis", "rationale"}
    if group in ("data", "method", "backbone", "logger"):
        assert cfg[group].name == option
    if group in ("synthesis", "rationale") and option == "none":
        assert cfg[group].name == "none"
    # and together with the smoke profile used by the tests
    compose_cfg([f"{group}={option}", "debug=smoke"])


def test_defaults_are_the_main_job():
    cfg = compose_cfg([])
    assert (cfg.data.name, cfg.method.name, cfg.backbone.name) == ("cub53", "mocov2", "resnet18")
    assert cfg.data.root is None and cfg.backbone.weights is None
    assert cfg.logger.name == "wandb" and cfg.logger.mode == "offline"
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.name == "mocov2-cub53"


def test_group_values():
    ddp = compose_cfg(["trainer=ddp"]).trainer
    assert ddp.strategy == "ddp" and ddp.sync_batchnorm is True and ddp.devices == 2
    assert compose_cfg(["trainer=gpu"]).trainer.accelerator == "gpu"
    assert compose_cfg(["method=simsiam"]).method.fixed_pred_lr is True
    assert compose_cfg(["method=mocov2"]).method.temperature == 0.2
    assert compose_cfg(["backbone=resnet50"]).backbone.name == "resnet50"
    for d in ("cub", "cars", "aircraft", "imagefolder"):  # no root by default: the reader asks for one
        data = compose_cfg([f"data={d}"]).data
        assert OmegaConf.is_missing(data, "root") or data.root is None, d


def test_smoke_profile():
    cfg = compose_cfg(["debug=smoke"])
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 2
    assert cfg.eval.max_images == 64
    assert cfg.logger.name == "csv"
    # an explicit logger on the command line wins over the smoke profile's choice
    assert compose_cfg(["debug=smoke", "logger=wandb"]).logger.name == "wandb"
    assert compose_cfg(["logger=none", "debug=smoke"]).logger.name == "none"
    # and the experiment + smoke combination composes
    cfg = compose_cfg([f"experiment={_options('experiment')[0]}", "debug=smoke"])
    assert cfg.trainer.max_epochs == 1


@pytest.mark.parametrize("override,key", [
    ("data.rot=1", "rot"),
    ("method.temprature=0.1", "temprature"),
    ("trainr.max_epochs=1", "trainr"),
    ("backbone.weight=/x.pth", "weight"),
])
def test_unknown_key_fails_naming_it(override, key):
    with pytest.raises(Exception) as ei:
        compose_cfg([override])
    assert key in str(ei.value)


def test_misspelt_key_in_a_config_file_fails(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\ndata:\n  image_sise: 96\n")
    with pytest.raises(Exception) as ei:
        compose(["experiment=typo"], conf)
    assert "image_sise" in str(ei.value)


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_cli_unknown_key_exits_naming_it(script, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / script), "data.rot=1", f"hydra.run.dir={tmp_path}"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "rot" in out
    assert "Traceback" not in out, out
    assert not (tmp_path / "checkpoints").exists()


def test_bad_component_values_raise_one_line_config_errors():
    """A value outside the allowed set of a SYN/LCR/eval knob is a ConfigError naming the key, before anything runs."""
    import pytest

    from fgssl.errors import ConfigError
    from fgssl.preflight import check_cli_keys

    for overrides, key in ((["synthesis=syn", "synthesis.criterion=bogus"], "synthesis.criterion"),
                           (["rationale=lcr", "rationale.mode=bogus"], "rationale.mode")):
        with pytest.raises(ConfigError, match=key):
            check_cli_keys(["debug=smoke", "method=simsiam", *overrides])


def test_method_config_is_per_method():
    """MoCo's keys do not appear on SimSiam (issue 18, item 11), and giving one is the unknown-key line."""
    import pytest

    from fgssl.errors import ConfigError
    from fgssl.preflight import check_cli_keys

    sim, moco = compose_cfg(["method=simsiam"]).method, compose_cfg(["method=mocov2"]).method
    moco_only = {"temperature", "ema_momentum", "queue_size", "symmetric", "bn_splits"}
    assert not moco_only & set(sim) and moco_only <= set(moco)
    assert not {"pred_hidden", "fixed_pred_lr"} & set(moco)
    with pytest.raises(ConfigError, match=r"method.temperature: 'method' \(simsiam\) has no key 'temperature'"):
        check_cli_keys(["method=simsiam", "method.temperature=0.1"])
    # an experiment's per-method values reach only their method
    assert compose_cfg(["experiment=cpu_evidence"]).method.queue_size == 2048
    assert "queue_size" not in compose_cfg(["experiment=cpu_evidence", "method=simsiam"]).method
    # recipe.simsiam.lr: SimSiam at 4x its lr in cpu_evidence; the default and MoCo v2's lr untouched
    assert compose_cfg(["experiment=cpu_evidence", "method=simsiam"]).method.lr == 0.2
    assert compose_cfg(["method=simsiam"]).method.lr == 0.05
    assert compose_cfg(["experiment=cpu_evidence"]).method.lr == compose_cfg([]).method.lr == 0.06
    assert compose_cfg(["experiment=cpu_evidence", "method=simsiam", "method.lr=0.3"]).method.lr == 0.3

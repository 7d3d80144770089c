"""Evaluate a checkpoint: ``python evaluate.py ckpt=outputs/.../checkpoints/last.ckpt``.

``ckpt=random`` evaluates the untrained network built from the given config.
"""

import sys

import hydra
from omegaconf import DictConfig

from fgssl.errors import run_or_exit
from fgssl.plugins import setup
from fgssl.preflight import preflight, prepare_argv

setup()  # the methods, regularizers and plug-ins register their config


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_or_exit(preflight, cfg, "evaluate")  # before torch and Lightning are imported
    from fgssl.run import evaluate

    run_or_exit(evaluate, cfg)


if __name__ == "__main__":
    prepare_argv(sys.argv, "evaluate")
    main()

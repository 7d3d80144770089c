"""Evaluate a checkpoint: ``python evaluate.py ckpt=outputs/.../checkpoints/last.ckpt``.

``ckpt=random`` evaluates the untrained network built from the given config.
"""

import hydra
from omegaconf import DictConfig

from fgssl.config import register_configs
from fgssl.errors import run_or_exit

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from fgssl.run import evaluate

    run_or_exit(evaluate, cfg)


if __name__ == "__main__":
    main()

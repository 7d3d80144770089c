"""Pre-train an SSL method (Hydra entry point): ``python train.py method=mocov2 data=cub53``."""

import sys

import hydra
from omegaconf import DictConfig

from fgssl.config import register_configs
from fgssl.errors import run_or_exit
from fgssl.preflight import preflight, prepare_argv

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    run_or_exit(preflight, cfg, "train")  # paths, sizes, keys, device: before Lightning is imported
    from fgssl.run import train

    metrics = run_or_exit(train, cfg)
    return metrics.get("test/retrieval_map", 0.0)


if __name__ == "__main__":
    prepare_argv(sys.argv, "train")
    main()

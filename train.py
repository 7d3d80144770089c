"""Pre-train an SSL method (Hydra entry point): ``python train.py method=mocov2 data=cub53``."""

import sys

import hydra
from omegaconf import DictConfig

from fgssl.config import register_configs
from fgssl.errors import FgsslError

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from fgssl.run import train

    try:
        metrics = train(cfg)
    except FgsslError as e:
        print(f"fgssl error: {e}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("test/retrieval_map", 0.0)


if __name__ == "__main__":
    main()

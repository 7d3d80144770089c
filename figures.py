"""Paper figures from a checkpoint and/or a sweep directory.

    python figures.py ckpt=outputs/.../checkpoints/last.ckpt
    python figures.py ckpt=BASE.ckpt 'figures.compare=[SYN.ckpt,LCR.ckpt]'
    python figures.py figures.sweep_dir=multirun/2026-11-23/10-00-00
"""

import sys

import hydra
from omegaconf import DictConfig

from fgssl.config import register_configs
from fgssl.errors import FgsslError

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from fgssl.figures import make_figures

    try:
        make_figures(cfg)
    except FgsslError as e:
        print(f"fgssl error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Paper figures from a checkpoint and/or a sweep directory.

    python figures.py ckpt=outputs/.../checkpoints/last.ckpt
    python figures.py ckpt=BASE.ckpt 'figures.compare=[SYN.ckpt,LCR.ckpt]'
    python figures.py figures.sweep_dir=multirun/2026-11-23/10-00-00
"""

import hydra
from omegaconf import DictConfig

from fgssl.config import register_configs
from fgssl.errors import run_or_exit

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from fgssl.figures import make_figures

    run_or_exit(make_figures, cfg)


if __name__ == "__main__":
    main()

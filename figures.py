"""Paper figures from a checkpoint and/or a sweep directory.

    python figures.py ckpt=outputs/.../checkpoints/last.ckpt
    python figures.py ckpt=BASE.ckpt 'figures.compare=[SYN.ckpt,LCR.ckpt]'
    python figures.py figures.sweep_dir=multirun/syn_alpha_sweep/mocov2
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
    run_or_exit(preflight, cfg, "figures")  # before torch and Lightning are imported
    from fgssl.plots import make_figures

    run_or_exit(make_figures, cfg)


if __name__ == "__main__":
    prepare_argv(sys.argv, "figures")
    main()

"""Pre-train an SSL method (Hydra entry point): ``python train.py method=mocov2 data=cub53``."""

import sys

import hydra
from omegaconf import DictConfig

from fgssl.plugins import setup
from fgssl.preflight import preflight, prepare_argv

setup()  # the methods, regularizers and plug-ins register their config


def _train(cfg: DictConfig):
    from fgssl.run import train  # Lightning: imported once the preflight checks passed

    return train(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from fgssl.lifecycle import run_job

    # preflight (paths, sizes, keys, device: before Lightning is imported), then the run under its folder's
    # lock and the graceful stop; one-line errors; in a sweep a failed job writes error.txt and the sweep goes on
    metrics = run_job(_train, cfg, preflight=lambda c: preflight(c, "train"))
    return float("nan") if metrics is None else metrics.get("test/retrieval_map", 0.0)  # None: the job failed


if __name__ == "__main__":
    prepare_argv(sys.argv, "train")
    main()

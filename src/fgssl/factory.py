"""Build a trained-or-untrained model from a composed config: the one factory that training,
evaluation, figures, the notebook and the benchmark share."""

from __future__ import annotations

from omegaconf import DictConfig


def build_model(cfg: DictConfig, num_train: int, world_size: int = 1):
    """The method named by ``cfg.method.name`` with every regularizer the config attaches, its derived
    values (e.g. the MoCo queue size) resolved for ``num_train`` images over ``world_size`` processes."""
    from fgssl.methods import build_method
    from fgssl.run import resolve_queue

    resolve_queue(cfg, num_train, world_size)
    return build_method(cfg)

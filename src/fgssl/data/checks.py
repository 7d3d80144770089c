"""Checks of the data config that need only the dataset's size (light: no torch), shared by the datamodule and
the preflight checks."""

from __future__ import annotations

from omegaconf import DictConfig

from fgssl.errors import FgsslError


def check_batch_size(data: DictConfig, num_train: int, world_size: int) -> None:
    if data.batch_size * world_size > num_train:
        raise FgsslError(
            f"data.batch_size={data.batch_size} (x {world_size} processes) is larger than the "
            f"{num_train} training images of data={data.name}; lower data.batch_size")
    if data.batch_size < 2:
        raise FgsslError(f"data.batch_size={data.batch_size}: BatchNorm needs at least 2 images per batch")

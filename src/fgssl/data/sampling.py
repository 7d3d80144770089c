"""Pre-training order and augmentation randomness that survive a kill and a change of world size.

* :class:`ResumableSampler` draws the epoch's permutation from ``(seed, epoch)`` only and
  cuts it into global batches of ``B x W`` images (the tail that fills no global batch is
  dropped); rank ``r`` takes the r-th block of ``B`` of every global batch. Gathering the
  ranks' batches in rank order therefore gives exactly the batch a single process with
  batch ``B x W`` sees, in the same order (MoCo's queue is identical, not just equivalent).
* Every index it yields carries its own augmentation seed, a function of
  ``(seed, epoch, index)``: :class:`~fgssl.data.datamodule.ImageDataset` applies the two
  random views under that seed, so an image gets the same views whichever process,
  worker or resumed run loads it.
* :class:`ResumableLoader` implements Lightning's ``state_dict`` / ``load_state_dict``
  loader interface: a checkpoint written in the middle of an epoch records how many
  batches of that epoch were trained, and a resumed run skips exactly those.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Sampler

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant: decorrelates (seed, epoch) streams


def _epoch_key(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (1 << 63)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of ``index`` in ``epoch`` (a 63-bit integer)."""
    return (_epoch_key(seed, epoch) * _MIX + index * 0xBF58476D1CE4E5B9) % (1 << 63)


def global_batches(n: int, batch_size: int, world_size: int) -> int:
    """Full global batches of ``batch_size x world_size`` in ``n`` images (the tail is dropped)."""
    return n // (batch_size * world_size)


class ResumableSampler(Sampler[Tuple[int, int]]):
    """Yields ``(index, augmentation seed)`` for this process's shard of the epoch's permutation."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, epoch: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.epoch = epoch
        self.skip = 0  # indices to skip at the start of the next iteration (a mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_batches(self) -> int:
        return global_batches(self.n, self.batch_size, self.world_size)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_epoch_key(self.seed, epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        b, w = self.batch_size, self.world_size
        blocks = self.permutation(self.epoch)[: self.num_batches * b * w].view(self.num_batches, w, b)
        shard = blocks[:, self.rank].flatten().tolist()
        skip, self.skip = self.skip, 0
        for i in shard[skip:]:
            yield i, sample_seed(self.seed, self.epoch, i)


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` that Lightning can checkpoint mid-epoch.

    ``batches_done`` reports how many batches of the current epoch the training loop has
    finished (Lightning prefetches, so counting the batches this loader yielded would be one
    ahead).
    """

    def __init__(self, dataset, sampler: ResumableSampler,
                 batches_done: Optional[Callable[[], int]] = None, **kw):
        # its own generator: creating an iterator must not draw from the global RNG (a resumed run
        # creates one more iterator than an uninterrupted one); augmentations are seeded per sample
        kw.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
        super().__init__(dataset, batch_size=sampler.batch_size, sampler=sampler, drop_last=True, **kw)
        self.batches_done = batches_done or (lambda: 0)

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self.batches_done())}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if int(state.get("epoch", -1)) == self.sampler.epoch:
            self.sampler.skip = int(state.get("batches", 0)) * self.batch_size


class ShardSampler(Sampler[int]):
    """Evaluation order for DDP: rank ``r`` reads the r-th contiguous block of ``ceil(n / W)`` items;
    the last block is padded by repeating the last item. All-gathering the ranks' outputs in rank
    order and keeping the first ``n`` rows restores the single-process order exactly."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = n, rank, world_size
        self.per_rank = -(-n // world_size)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        start = self.rank * self.per_rank
        return iter([min(i, self.n - 1) for i in range(start, start + self.per_rank)])

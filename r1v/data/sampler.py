"""A shuffling sampler whose order depends only on (seed, epoch) and that can start mid-epoch.

The stage records how many samples of the current epoch were trained on in every checkpoint; on
resume the sampler skips exactly those, so no sample is seen twice or skipped within the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, samples already consumed on this rank)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def resume_at(self, epoch: int, consumed: int) -> None:
        self._resume = (epoch, consumed)

    def order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        per_rank = self.n // self.world_size  # equal shares keep ranks in lock-step
        return idx[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        idx = self.order(self.epoch)
        if self._resume and self._resume[0] == self.epoch:
            idx = idx[self._resume[1] :]
            self._resume = None
        return iter(idx)

    def __len__(self) -> int:
        return self.n // self.world_size

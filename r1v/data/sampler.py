"""A shuffling sampler whose order depends only on (seed, epoch) and that can start mid-epoch.

Every sample of an epoch goes to exactly one rank: the shuffled order is cut into ``world_size`` contiguous
shares, the first ``n % world_size`` ranks one sample longer. Ranks must stay in lock-step (the same number
of batches, else the collectives of DDP / DeepSpeed wait forever), so each shorter share is padded by one
:class:`PadIndex` at its *front*: a repeat of one of its samples that carries no weight. The train data set
is wrapped in :class:`PadAware`, which marks the sample fetched for a pad index (``meta[PAD] = True``); the
collators drop marked samples and GRPO gives their completions zero weight (``r1v.stages.grpo``). At the front,
a pad shares its batch with real samples whenever ``batch_size ≥ 2`` and the share has two or more samples;
otherwise (``batch_size=1``) its batch is empty after the collator, and the SFT-family stages take part in
that step's all-reduce with a zero loss (:meth:`r1v.stages.base.LightningStage.empty_loss`).
When ``world_size`` divides ``n`` nothing is padded and the shares are the same as before padding existed.

The stage records how many positions of the current epoch (pads included) were trained on in every
checkpoint; on resume the sampler skips exactly those, so no sample is seen twice or skipped within the epoch.

A data set read by row groups (Parquet: ``ds.row_groups``, the cumulative row count at each group's end) gets a
:class:`BlockShuffleSampler` instead (:func:`train_sampler`): a uniform shuffle would read a whole row group for
every sample, a block shuffle reads each group once per epoch with a cache of ``window`` groups. Same sharding,
padding and resume contract.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

PAD = "_pad"  # Sample.meta key of a lock-step repeat


class PadIndex(int):
    """An index yielded only to keep ranks in lock-step: the sample it fetches must carry no weight."""

    def __repr__(self) -> str:
        return f"PadIndex({int(self)})"


def is_pad(sample: Any) -> bool:
    """Whether ``sample`` was fetched for a :class:`PadIndex` (marked by :class:`PadAware`)."""
    meta = getattr(sample, "meta", None)
    return bool(meta.get(PAD)) if isinstance(meta, dict) else False


def mark(sample: Any, index: int) -> Any:
    """``sample`` as fetched for ``index``: a copy with ``meta[PAD] = True`` for a :class:`PadIndex`."""
    if not isinstance(index, PadIndex) or not dataclasses.is_dataclass(sample):
        return sample
    return dataclasses.replace(sample, meta={**getattr(sample, "meta", {}), PAD: True})


class PadAware(Dataset):
    """A train data set that marks the samples fetched for pad indices (every other attribute passes through)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        return mark(self.ds[int(i)], i)

    def __getattr__(self, name: str) -> Any:
        if name == "ds":  # not set yet (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.ds, name)


class ResumableSampler(Sampler[int]):
    """This rank's share of a seeded shuffle of ``range(n)``, ``ceil(n / world_size)`` positions long."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, positions already consumed on this rank)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def resume_at(self, epoch: int, consumed: int) -> None:
        """Skip the first ``consumed`` positions (pads included) when ``epoch`` is iterated next."""
        self._resume = (epoch, consumed)

    def order(self, epoch: int) -> list[int]:
        """This rank's positions of ``epoch``: its share of the shuffle, a leading :class:`PadIndex` if short."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        base, extra = divmod(self.n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        share = idx[start : start + base + (self.rank < extra)]
        if len(share) < len(self) and idx:  # a short share: one pad in front (a repeat, never trained on)
            share = [PadIndex(share[0] if share else idx[0]), *share]
        return share

    def __iter__(self) -> Iterator[int]:
        idx = self.order(self.epoch)
        if self._resume and self._resume[0] == self.epoch:
            idx = idx[self._resume[1] :]
            self._resume = None
        return iter(idx)

    def __len__(self) -> int:
        return -(-self.n // self.world_size)  # every rank the same: ceil(n / world_size)


class BlockShuffleSampler(ResumableSampler):
    """A shuffle local enough for data read by row groups: the row groups in a seeded order, cut into windows of
    ``window`` groups, the rows of each window shuffled among themselves. Both depend only on (seed, epoch,
    window), so position k of an epoch maps to its row in O(rows of one window) — bisect for the window, then its
    permutation (cached while iterating) — and a resume starts mid-epoch without replaying it. Ranks get
    contiguous shares of the epoch's order as :class:`ResumableSampler`'s do, so each rank's reads stay within
    windows too; a reader caching ``window`` row groups reads each group about once per epoch."""

    def __init__(self, bounds: Sequence[int], window: int = 4, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        if any(b <= a for a, b in zip([0, *bounds], bounds, strict=False)):
            raise ValueError("row-group bounds must be increasing cumulative row counts (no empty groups)")
        super().__init__(bounds[-1] if bounds else 0, seed, shuffle, rank, world_size)
        self.bounds, self.window = list(bounds), max(1, int(window))
        self._layout: tuple[int, np.ndarray, list[int]] | None = None  # (epoch, group order, rows at window ends)
        self._cached: tuple[int, int, np.ndarray] | None = None  # (epoch, window, its rows in epoch order)

    def _rng(self, epoch: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed % 2**63, epoch, stream])  # stream 0: groups, j + 1: window j

    def _epoch(self, epoch: int) -> tuple[np.ndarray, list[int]]:
        if self._layout is None or self._layout[0] != epoch:
            g = len(self.bounds)
            groups = self._rng(epoch, 0).permutation(g) if self.shuffle else np.arange(g)
            sizes = np.diff([0, *self.bounds])[groups]
            ends = np.cumsum([sizes[i : i + self.window].sum() for i in range(0, g, self.window)]).tolist()
            self._layout = (epoch, groups, ends)
        return self._layout[1], self._layout[2]

    def _rows(self, epoch: int, j: int) -> np.ndarray:
        """The data set indices of window ``j`` of ``epoch``, in the order the epoch visits them."""
        if self._cached is None or self._cached[:2] != (epoch, j):
            groups, _ = self._epoch(epoch)
            starts = [0, *self.bounds]
            mine = groups[j * self.window : (j + 1) * self.window]
            rows = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in mine])
            self._cached = (epoch, j, self._rng(epoch, j + 1).permutation(rows) if self.shuffle else rows)
        return self._cached[2]

    def index_at(self, epoch: int, k: int) -> int:
        """The data set index at position ``k`` of ``epoch``'s order (all ranks' positions together)."""
        _, ends = self._epoch(epoch)
        j = bisect.bisect_right(ends, k)
        return int(self._rows(epoch, j)[k - (ends[j - 1] if j else 0)])

    def _share(self, epoch: int, skip: int) -> Iterator[int]:
        base, extra = divmod(self.n, self.world_size)
        start, length = self.rank * base + min(self.rank, extra), base + (self.rank < extra)
        padded = int(length < len(self) and self.n > 0)
        if padded and skip == 0:  # a short share: one pad in front, as ResumableSampler's
            yield PadIndex(self.index_at(epoch, start if length else 0))
        for k in range(start + max(0, skip - padded), start + length):
            yield self.index_at(epoch, k)

    def order(self, epoch: int) -> list[int]:
        return list(self._share(epoch, 0))

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume and self._resume[0] == self.epoch:
            skip, self._resume = self._resume[1], None
        return self._share(self.epoch, skip)


def train_sampler(ds: Any, seed: int, rank: int, world_size: int) -> Sampler[int]:
    """The training order of ``ds``: a block shuffle when it is read by row groups (``row_groups``, with
    ``shuffle_window`` groups cached per reader), else a uniform shuffle. A data set that brings its own training
    order (``make_sampler``: a mixture of sources, :mod:`r1v.data.mixture`) gets that."""
    make = getattr(ds, "make_sampler", None)
    if callable(make):  # duck-typed: the mixture module builds on this one, so it cannot be imported here
        return make(seed=seed, rank=rank, world_size=world_size)
    bounds = getattr(ds, "row_groups", None)
    if bounds:
        window = int(getattr(ds, "shuffle_window", 4))
        return BlockShuffleSampler(bounds, window, seed=seed, rank=rank, world_size=world_size)
    return ResumableSampler(len(ds), seed=seed, rank=rank, world_size=world_size)


class WindowLoader(DataLoader):
    """A DataLoader whose batches come in windows of ``window`` (one optimizer step's gradient accumulation),
    read ahead so that every batch carries its window's total of loss tokens (``window_tokens``, from each
    batch's ``loss_tokens``) and whether it opens the window (``window_first``). The SFT loss divides by that
    total, so a window of micro-batches trains exactly like one batch of all their tokens: a per-micro-batch
    mean would weigh a token of a short micro-batch more than one of a long one."""

    def __init__(self, *args: Any, window: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.window = window

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        batches = super().__iter__()
        while group := list(itertools.islice(batches, self.window)):
            total = sum(int(b.get("loss_tokens", 0)) for b in group)
            for i, b in enumerate(group):
                b["window_tokens"], b["window_first"] = total, i == 0
                yield b

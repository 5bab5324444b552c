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
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

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

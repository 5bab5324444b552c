"""The bookkeeping every training stage shares, as objects a stage holds (not a base class to inherit):

- :class:`StepGuard` — a step with a non-finite loss or gradient is skipped and counted; too many in a row stop
  the run with the last good checkpoint intact;
- :class:`DataPosition` — how far into the epoch the run is, so a resumed run continues at the exact sample, and
  how many samples the collator had to skip.

Each has ``state_dict`` / ``load_state_dict`` for the stage's checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from r1v.data.sampler import WindowLoader, train_sampler
from r1v.runtime.runs import NonFiniteError

log = logging.getLogger(__name__)


def grads_finite(model: torch.nn.Module) -> bool | None:
    """Whether every gradient is finite (one host sync); None when no parameter holds one (e.g. DeepSpeed keeps
    them in its own buffers)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    # one multi-tensor max-abs per dtype/device group instead of two kernels per parameter (~700 launches per step
    # for a 1.5B model under full fine-tuning); the max norm keeps a huge finite gradient finite (a 2-norm's
    # squares overflow from 1.8e19) and an inf or nan element makes it inf or nan
    norms = torch._foreach_norm(grads, ord=float("inf"))
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


class StepGuard:
    """Counts skipped non-finite steps; ``limit`` (``stage.max_nonfinite``) in a row raise :class:`NonFiniteError`."""

    def __init__(self, limit: int) -> None:
        self.limit, self.total, self.streak = int(limit), 0, 0

    def record(self) -> None:
        """One more step skipped (before the caller logs the new total and calls :meth:`check`)."""
        self.total += 1
        self.streak += 1

    def check(self, what: str, step: int) -> None:
        """Warn about the step just recorded; stop the run once ``limit`` steps in a row were skipped."""
        log.warning("step %d: non-finite %s, step skipped (%d in a row)", step, what, self.streak)
        if self.streak >= self.limit:
            raise NonFiniteError(
                f"{self.streak} steps in a row with a non-finite {what}, at step {step} (stage.max_nonfinite="
                f"{self.limit}); checkpoints up to the last good step are kept: lower stage.lr or check the data, "
                "then continue with resume=auto"
            )

    def ok(self) -> None:
        """A finite step: the streak starts over."""
        self.streak = 0

    def state_dict(self) -> dict[str, int]:
        return {"nonfinite": self.total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total = int(state.get("nonfinite", 0))


class DataPosition:
    """Batches trained in the current epoch and samples skipped by the collator; on resume, the sampler
    continues at the checkpoint's (epoch, consumed samples) instead of the epoch's start."""

    def __init__(self, batch_size: int, seed: int) -> None:
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.batches_done = 0
        self.skipped = 0
        self.skipped_rows: dict[str, str] = {}  # id -> kind of each sample skipped, once (run.json's data.train)
        self.resume_at: tuple[int, int] | None = None  # (epoch, samples consumed) of the checkpoint
        self.sampler: Any = None  # the last loader's (a mixture's keeps per-source counts: sources())
        self.mixture_state: dict[str, Any] | None = None  # a mixture's counts at the checkpoint, for the sampler
        self.last_sources: dict[str, Any] | None = None  # a mixture's counts when last asked (run.json at the end)

    def loader(self, ds: Dataset, collate_fn: Callable[[list[Any]], Any], world: int, rank: int,
               num_workers: int = 0, window: int = 1) -> DataLoader:  # fmt: skip
        """Batches in a seeded order sharded by rank (block-shuffled for data read by row groups), continuing
        mid-epoch on resume; ``window`` > 1: read ahead a window at a time (:class:`~r1v.data.sampler.WindowLoader`)."""
        sampler = train_sampler(ds, seed=self.seed, rank=rank, world_size=world)
        if self.resume_at:
            sampler.resume_at(*self.resume_at)
            # the resumed epoch from the start: with loader workers Lightning makes the iterator (whose workers
            # prefetch, so the sampler is iterated) before it calls set_epoch for the epoch it resumes in; the
            # sampler then iterated epoch 0 from its first sample instead (found by a kill in epoch 1, 2 workers)
            sampler.set_epoch(self.resume_at[0])
        if self.mixture_state and hasattr(sampler, "restore"):
            sampler.restore(self.mixture_state)
        self.sampler = sampler
        kind, extra = (WindowLoader, {"window": window}) if window > 1 else (DataLoader, {})
        return kind(ds, batch_size=self.batch_size, sampler=sampler, drop_last=False, collate_fn=collate_fn,
                    num_workers=num_workers, **extra)  # fmt: skip

    def start_epoch(self, epoch: int) -> None:
        """Batches already done in ``epoch``: those before the checkpoint when resuming into it, else none."""
        if self.resume_at and self.resume_at[0] == epoch:
            self.batches_done = self.resume_at[1] // self.batch_size
        else:
            self.batches_done = 0

    def sources(self, epoch: int, remember: bool = False) -> dict[str, Any] | None:
        """A mixture's position: draws so far per source and passes started (None for other data); ``remember``:
        keep it as the run's last trained position (``last_sources``, run.json's counts at the end)."""
        state_at = getattr(self.sampler, "state_at", None)
        if not callable(state_at):
            return None
        state = state_at(epoch, self.batches_done * self.batch_size)
        if remember:
            self.last_sources = state
        return state

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """Every rank calls this when a checkpoint is saved (only rank 0's copy is written), so the skips are
        gathered here: the rows every rank skipped, and each rank's count (a resume gives each its own back)."""
        consumed = self.batches_done * self.batch_size
        by_rank, rows = skips_over_ranks(self.skipped, self.skipped_rows)
        state = {
            "data_position": {"epoch": epoch, "consumed": consumed},
            "skipped": sum(by_rank),
            "skipped_by_rank": by_rank,
            "skipped_rows": rows,
        }
        mixture = self.sources(epoch)
        if mixture is not None:
            state["mixture"] = mixture
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pos = state.get("data_position")
        if pos:
            self.resume_at = (int(pos["epoch"]), int(pos["consumed"]))
            # Lightning does not call on_train_epoch_start for an epoch it resumes in the middle of: without this,
            # the count restarted at 0 and the next checkpoint of this process saved too few consumed samples, so
            # a second resume replayed the wrong batches (found by benchmarks/soak.py)
            self.batches_done = self.resume_at[1] // self.batch_size
        rank, world = _rank_world()
        by_rank = state.get("skipped_by_rank")
        if isinstance(by_rank, list) and len(by_rank) == world:
            self.skipped = int(by_rank[rank])
        else:  # saved by another number of ranks (or before counts were per rank): rank 0 carries the total
            self.skipped = int(state.get("skipped", 0)) if rank == 0 else 0
        self.skipped_rows = dict(state.get("skipped_rows") or {})
        self.mixture_state = dict(state["mixture"]) if state.get("mixture") else None


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def skips_over_ranks(skipped: int, rows: Mapping[str, str]) -> tuple[list[int], dict[str, str]]:
    """Each rank's count of skipped samples and the union of the rows they skipped (id -> kind), gathered from
    every rank (a collective: all ranks call it); this rank's alone when not distributed."""
    if _rank_world()[1] == 1:
        return [int(skipped)], dict(rows)
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, (int(skipped), dict(rows)))
    union: dict[str, str] = {}
    for _, r in gathered:
        union.update(r)
    return [n for n, _ in gathered], union

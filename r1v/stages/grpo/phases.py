"""The phases of one GRPO step, each a function over an :class:`Experience`.

``GRPOStage.training_step`` runs them in this order (every step makes one Experience):

1. **rollout** — G completions per prompt (the stage's engine; DRLC-style per-sample knobs);
2. **rewards** — :func:`score`: the reward plugins (time-limited) plus the length controller's shaping term;
3. **advantages** — :func:`grouped_rollouts`: Â = (r − mean_group) / std_group, one :class:`Rollout` per completion;
   :func:`mark_lockstep_pads` zeroes the prompts the sampler repeated only to keep ranks in step;
4. **refill** (DAPO's dynamic sampling, optional) — :func:`refill`: all-equal groups dropped, fresh prompts rolled out;
5. **old log-probs** — :func:`old_logprobs` (needed when μ > 1 or completions are replayed);
6. **sample buffer** (R1V2's SSB, optional) — :func:`replay_from_buffer` tops the batch up with buffered completions;
7. **reference log-probs** — :func:`reference_logprobs` (β > 0);

then the update (``GRPOStage.update``) consumes ``Experience.items`` and ``Experience.reference``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from r1v.core.interfaces import RewardInput, Sample
from r1v.data.sampler import is_pad
from r1v.rl.grpo import Rollout, SelectiveSampleBuffer, equal_groups, group_advantages

RollOut = Callable[[list[Sample]], tuple[list[Rollout], list[dict[str, float]], list[str]]]
LogProbs = Callable[[list[tuple[Rollout, Sample]]], torch.Tensor]  # a micro-batch -> (b, T) per-token log-probs


@dataclass
class Experience:
    """What one step collects before its update: completions grouped by prompt, their rewards and advantages, and
    the log-probs the loss compares against. ``rollouts[k].sample_index`` indexes ``prompts``."""

    prompts: list[Sample]  # every prompt rolled out this step (refills appended)
    indices: list[int]  # their data-set indices (the buffer refers to prompts by index)
    rollouts: list[Rollout] = field(default_factory=list)  # G per prompt, consecutive
    parts: list[dict[str, float]] = field(default_factory=list)  # reward parts per completion (pads left out)
    texts: list[str] = field(default_factory=list)  # the first rollout's completions, decoded
    effective_share: float = 0.0  # completions with Â ≠ 0 among the real ones (before any refill)
    items: list[tuple[Rollout, Sample]] = field(default_factory=list)  # what the update trains on
    replayed: int = 0  # completions taken from the sample buffer
    reference: list[torch.Tensor] = field(default_factory=list)  # per micro-batch (b, T) reference log-probs
    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)  # rollout / reference


def score(runner: Any, length: Any, samples: Sequence[Sample], texts: Sequence[str],
          completion_ids: Sequence[Sequence[int]]) -> tuple[list[dict[str, float]], list[float]]:  # fmt: skip
    """Phase 2, rewards: each completion's named reward parts and total — the reward plugins through ``runner``
    (time limits, failure counts), plus the length controller's shaping term when it has one (``length``)."""
    inputs = [RewardInput.of(s, t, id=s.id) for s, t in zip(samples, texts, strict=True)]
    parts, totals = runner.score(inputs)
    shaping = length if callable(length) else None
    for k, ids in enumerate(completion_ids):
        extra = float(shaping(len(ids))) if shaping else 0.0
        if extra:
            parts[k]["length"] = extra
            totals[k] += extra
    return parts, totals


def grouped_rollouts(prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], totals: Sequence[float],
                     group_size: int, scale: bool, eos: int) -> list[Rollout]:  # fmt: skip
    """Phase 3, advantages: one :class:`Rollout` per completion (``group_size`` consecutive ones per prompt), its
    advantage relative to its group (:func:`r1v.rl.grpo.group_advantages`) and whether it ran out of budget."""
    adv = group_advantages(torch.tensor(list(totals)), group_size, scale)
    return [Rollout(k // group_size, prompt_ids[k // group_size], ids, float(adv[k]), reward=totals[k],
                    meta={"truncated": not ids or ids[-1] != eos}) for k, ids in enumerate(completion_ids)]  # fmt: skip


def mark_lockstep_pads(exp: Experience) -> None:
    """A prompt the sampler repeated to keep ranks in lock step is rolled out like the others (every rank does the
    same work and collectives) but weighs nothing: Â = 0 (never buffered), its tokens are masked out of the loss,
    its rewards left out of the logged ones. Sets ``effective_share`` over the real completions."""
    for r in exp.rollouts:
        if is_pad(exp.prompts[r.sample_index]):
            r.advantage, r.meta["pad"] = 0.0, True
    exp.parts = [p for p, r in zip(exp.parts, exp.rollouts, strict=True) if not r.meta.get("pad")] or exp.parts
    real = unpadded(exp.rollouts)
    exp.effective_share = sum(abs(r.advantage) > 1e-8 for r in exp.rollouts) / len(real)


def unpadded(rollouts: list[Rollout]) -> list[Rollout]:
    """The rollouts of real prompts (all of them when every prompt of the batch is a lock-step pad)."""
    return [r for r in rollouts if not r.meta.get("pad")] or rollouts


def drop_equal_groups(rollouts: list[Rollout], group_size: int) -> list[Rollout]:
    """The rollouts of groups whose rewards differ (an all-equal group has Â = 0 everywhere: no signal)."""
    flat = equal_groups(torch.tensor([r.reward for r in rollouts]), group_size)
    return [r for k, r in enumerate(rollouts) if not flat[k // group_size]]


def refill(exp: Experience, roll_out: RollOut, draw: Callable[[], int], dataset: Any, group_size: int,
           max_refills: int) -> None:  # fmt: skip
    """Phase 4, DAPO's dynamic sampling: drop all-equal groups and roll out fresh prompts (``draw()`` gives a
    data-set index) until the batch has its B·G completions again or ``max_refills`` rounds are spent; the batch
    is then cut to B·G."""
    n_prompts = len(exp.prompts)
    keep = drop_equal_groups(exp.rollouts, group_size)
    for _ in range(max_refills):
        if len(keep) >= n_prompts * group_size:
            break
        extra_idx = [draw() for _ in range(n_prompts)]
        extra = [dataset[i] for i in extra_idx]
        more, more_parts, _ = roll_out(extra)
        offset = len(exp.prompts)
        exp.prompts += extra
        exp.indices += extra_idx
        for r in more:
            r.sample_index += offset
        exp.parts += more_parts
        keep += drop_equal_groups(more, group_size)
    exp.rollouts = keep[: n_prompts * group_size]


def micro_batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def old_logprobs(items: list[tuple[Rollout, Sample]], micro: int, logprobs: LogProbs) -> None:
    """Phase 5: each completion's per-token log-probs under the policy that sampled it (``Rollout.old_logp``, float32
    on the CPU), the denominator of the clipped ratio when μ > 1 or when completions are replayed later."""
    for mb in micro_batches(items, micro):
        lp = logprobs(mb)
        for (r, _), row in zip(mb, lp, strict=True):
            r.old_logp = row[: len(r.completion_ids)].detach().float().cpu()


def stored_old_logprobs(mb: list[tuple[Rollout, Sample]], like: torch.Tensor) -> torch.Tensor:
    """The micro-batch's phase-5 log-probs in the ``[b, T]`` layout of ``like`` (zeros past each completion)."""
    old = torch.zeros_like(like)
    for b, (r, _) in enumerate(mb):
        old[b, : len(r.completion_ids)] = r.old_logp.to(like.device, like.dtype)
    return old


def replay_from_buffer(exp: Experience, ssb: SelectiveSampleBuffer, dataset: Any, target: int) -> None:
    """Phase 6, R1V2's Selective Sample Buffer: this step's completions enter the buffer (those with Â ≠ 0), the
    update keeps only the effective ones, and buffered completions drawn ∝ |Â| fill the batch up to ``target``."""
    ssb.add([r for r, _ in exp.items], exp.indices)
    effective = [(r, s) for r, s in exp.items if abs(r.advantage) > 1e-8]
    fill = [(r, dataset[i]) for r, i in ssb.sample(target - len(effective))]
    exp.replayed = len(fill)
    exp.items = effective + fill


@torch.no_grad()
def reference_logprobs(items: list[tuple[Rollout, Sample]], micro: int, logprobs: LogProbs) -> list[torch.Tensor]:
    """Phase 7: per micro-batch, the per-token log-probs under the frozen reference (``logprobs`` runs inside the
    reference's context), for the KL term."""
    return [logprobs(mb) for mb in micro_batches(items, micro)]

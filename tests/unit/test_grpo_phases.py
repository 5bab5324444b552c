"""The phases of a GRPO step (r1v/stages/grpo/phases.py), one by one, on hand-made rollouts."""

from __future__ import annotations

import pytest
import torch

from r1v.core.interfaces import Sample
from r1v.data.sampler import PAD
from r1v.rl.grpo import Rollout, SelectiveSampleBuffer, group_advantages
from r1v.rl.length import Overlong
from r1v.stages.grpo.phases import (
    Experience,
    drop_equal_groups,
    grouped_rollouts,
    mark_lockstep_pads,
    old_logprobs,
    reference_logprobs,
    refill,
    replay_from_buffer,
    score,
)


def _sample(i: int, pad: bool = False) -> Sample:
    return Sample(f"s{i}", f"question {i}", str(i), meta={PAD: True} if pad else {})


class _Runner:
    """A reward runner that gives each completion the number in its text as 'accuracy' (weight 1)."""

    def score(self, inputs):
        parts = [{"accuracy": float(x.completion)} for x in inputs]
        return parts, [p["accuracy"] for p in parts]


def test_score_adds_the_length_controllers_shaping_term():
    samples = [_sample(0)] * 3
    ids = [[1] * 4, [1] * 9, [1] * 12]  # overlong(max_len=12, buffer=4): 0, -0.25, -1.0
    parts, totals = score(_Runner(), Overlong(max_len=12, buffer=4), samples, ["1", "0", "1"], ids)
    assert totals == [1.0, -0.25, 0.0]
    assert parts == [{"accuracy": 1.0}, {"accuracy": 0.0, "length": -0.25}, {"accuracy": 1.0, "length": -1.0}]
    assert score(_Runner(), None, samples, ["1", "0", "1"], ids)[1] == [1.0, 0.0, 1.0]


def test_grouped_rollouts_carry_group_relative_advantages_and_truncation():
    totals = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    ids = [[5, 2], [5], [], [7, 2], [2], [3, 3]]
    rollouts = grouped_rollouts([[10], [11]], ids, totals, 3, True, eos=2)
    expected = group_advantages(torch.tensor(totals), 3, True)
    assert [r.advantage for r in rollouts] == pytest.approx(expected.tolist())
    assert [r.sample_index for r in rollouts] == [0, 0, 0, 1, 1, 1]
    assert [r.prompt_ids for r in rollouts] == [[10]] * 3 + [[11]] * 3
    assert [r.meta["truncated"] for r in rollouts] == [False, True, True, False, False, True]


def test_lockstep_pads_weigh_nothing_and_leave_the_logged_rewards():
    exp = Experience(prompts=[_sample(0), _sample(1, pad=True)], indices=[0, 1])
    exp.rollouts = grouped_rollouts([[1], [1]], [[2]] * 4, [1.0, 0.0, 1.0, 0.0], 2, True, eos=2)
    exp.parts = [{"accuracy": 1.0}, {"accuracy": 0.0}, {"accuracy": 0.5}, {"accuracy": 0.5}]
    mark_lockstep_pads(exp)
    assert [r.advantage != 0 for r in exp.rollouts] == [True, True, False, False]
    assert [bool(r.meta.get("pad")) for r in exp.rollouts] == [False, False, True, True]
    assert exp.parts == [{"accuracy": 1.0}, {"accuracy": 0.0}]
    assert exp.effective_share == 1.0  # both real completions carry a signal


def _group(rewards: list[float], prompt: int = 0) -> list[Rollout]:
    return [Rollout(prompt, [1], [2], 0.0, reward=r) for r in rewards]


def test_dynamic_sampling_refills_all_equal_groups_with_fresh_prompts():
    exp = Experience(prompts=[_sample(0), _sample(1)], indices=[0, 1])
    exp.rollouts = _group([1.0, 1.0]) + _group([0.0, 1.0], prompt=1)  # the first group is all-equal
    exp.parts = [{}] * 4
    rounds = iter([_group([0.0, 0.0]) + _group([0.0, 0.0], 1), _group([1.0, 0.0]) + _group([1.0, 1.0], 1)])
    drawn = iter(range(100, 200))
    dataset = {i: _sample(i) for i in range(100, 200)}
    refill(exp, lambda extra: (next(rounds), [{}] * 4, []), lambda: next(drawn), dataset, 2, max_refills=3)
    assert exp.indices == [0, 1, 100, 101, 102, 103]  # two refill rounds of two prompts each
    assert drop_equal_groups(exp.rollouts, 2) == exp.rollouts  # only groups with a signal are left
    assert [r.sample_index for r in exp.rollouts] == [1, 1, 4, 4]  # offsets into the grown prompt list
    assert exp.prompts[4].id == "s102" and len(exp.parts) == 4 + 8


def test_old_and_reference_logprobs_per_micro_batch():
    items = [(Rollout(0, [1], [2] * n, 1.0), _sample(0)) for n in (3, 1, 2)]
    calls = []

    def logprobs(mb):
        calls.append(len(mb))
        return torch.arange(4.0).repeat(len(mb), 1) + len(calls)  # (b, T=4)

    old_logprobs(items, 2, logprobs)
    assert calls == [2, 1]
    assert [r.old_logp.tolist() for r, _ in items] == [[1.0, 2.0, 3.0], [1.0], [2.0, 3.0]]
    ref = reference_logprobs(items, 2, logprobs)
    assert [t.shape for t in ref] == [(2, 4), (1, 4)] and calls == [2, 1, 2, 1]


def test_the_sample_buffer_keeps_the_effective_completions_and_fills_the_batch():
    ssb = SelectiveSampleBuffer(capacity=8, seed=0)
    exp = Experience(prompts=[_sample(0), _sample(1)], indices=[7, 9])
    old = torch.zeros(1)
    exp.items = [(Rollout(0, [1], [2], a, old_logp=old), exp.prompts[0]) for a in (0.5, 0.0)]
    exp.items += [(Rollout(1, [1], [2], a, old_logp=old), exp.prompts[1]) for a in (0.0, -1.0)]
    replay_from_buffer(exp, ssb, {7: _sample(7), 9: _sample(9)}, target=4)
    assert len(ssb) == 2 and exp.replayed == 2 and len(exp.items) == 4
    assert [abs(r.advantage) > 0 for r, _ in exp.items] == [True] * 4
    assert {s.id for _, s in exp.items[2:]} <= {"s7", "s9"}  # replayed with their prompts, by data-set index

"""ResumableSampler over several ranks: every sample of an epoch exactly once, ranks in lock-step (equal
lengths, a leading zero-weight pad on the shorter shares), exact mid-epoch resume; the pads reach the
collators and GRPO marked, and weigh nothing there."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from r1v.core.interfaces import Sample
from r1v.data.sampler import PAD, PadAware, PadIndex, ResumableSampler, is_pad

CASES = [(10, 3), (10, 4), (7, 2), (13, 5), (2, 3), (1, 4), (20, 2), (12, 4)]


def shares(n: int, world: int, epoch: int, seed: int = 3) -> list[list[int]]:
    out = []
    for rank in range(world):
        sampler = ResumableSampler(n, seed=seed, rank=rank, world_size=world)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
        assert len(sampler) == len(out[-1])
    return out


@pytest.mark.parametrize(("n", "world"), CASES)
def test_every_sample_once_per_epoch_and_ranks_in_lock_step(n, world):
    for epoch in (0, 1):
        ranks = shares(n, world, epoch)
        assert {len(r) for r in ranks} == {-(-n // world)}  # the same number of positions (and batches) everywhere
        real = sorted(int(i) for r in ranks for i in r if not isinstance(i, PadIndex))
        assert real == list(range(n))  # the union of real indices is the epoch, each once
        for r in ranks:
            pads = [k for k, i in enumerate(r) if isinstance(i, PadIndex)]
            assert pads in ([], [0])  # at most one pad, in front: it shares a batch with real samples
            assert all(0 <= int(i) < n for i in r)  # a pad still fetches a valid sample
        assert sum(isinstance(i, PadIndex) for r in ranks for i in r) == (-n) % world


def test_without_remainder_the_shares_are_the_unpadded_contiguous_ones():
    order = ResumableSampler(20, seed=3).order(4)  # one rank: the whole shuffle
    assert shares(20, 4, 4) == [order[r * 5 : (r + 1) * 5] for r in range(4)]


@pytest.mark.parametrize(("n", "world"), [(10, 3), (7, 4)])
def test_resume_mid_epoch_continues_each_rank_exactly(n, world):
    for rank in range(world):
        full = ResumableSampler(n, seed=5, rank=rank, world_size=world)
        full.set_epoch(2)
        order = list(full)
        for consumed in range(len(order) + 1):
            resumed = ResumableSampler(n, seed=5, rank=rank, world_size=world)
            resumed.resume_at(2, consumed)
            resumed.set_epoch(2)
            rest = list(resumed)
            assert rest == order[consumed:]
            assert [isinstance(i, PadIndex) for i in rest] == [isinstance(i, PadIndex) for i in order[consumed:]]
            resumed.set_epoch(3)
            assert len(list(resumed)) == len(order)  # the next epoch is whole again


def _samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", question="q", answer=str(i)) for i in range(n)]


@pytest.mark.parametrize("workers", [0, 1])
def test_pad_aware_marks_exactly_the_pad_positions_through_a_loader(workers):
    back = pickle.loads(pickle.dumps(PadIndex(4)))  # how it reaches loader workers
    assert back == 4 and isinstance(back, PadIndex)
    ds = PadAware(_samples(10))
    sampler = ResumableSampler(10, seed=1, rank=2, world_size=3)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=list, num_workers=workers)
    got = [s for batch in loader for s in batch]
    expected = list(sampler)
    assert [s.id for s in got] == [f"s{int(i)}" for i in expected]
    assert [is_pad(s) for s in got] == [isinstance(i, PadIndex) for i in expected] == [True, False, False, False]
    assert not is_pad(ds[int(expected[0])]) and PAD not in _samples(1)[0].meta  # the original is left unmarked


class _Processor:
    """Stands in for r1v.data.processor.Processor: records what gets encoded."""

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, s: Sample, target: str | None) -> dict:
        self.encoded.append(s.id)
        return {"id": s.id, "input_ids": [0, 1]}

    def collate(self, encoded: list[dict], padding_side: str) -> dict:
        return {"ids": [e["id"] for e in encoded]}


def test_sft_collator_drops_pads_uncounted():
    from r1v.data.collate import Collator

    ds = PadAware(_samples(4))
    pad, real = ds[PadIndex(1)], ds[2]
    proc = _Processor()
    batch = Collator(proc, "answer")([pad, real])  # type: ignore[arg-type]
    assert batch["ids"] == ["s2"] and batch["skipped"] == 0 and proc.encoded == ["s2"]
    assert Collator(proc, "answer")([pad]) == {"skipped": 0, "empty": True}  # type: ignore[arg-type]


def test_pair_collator_drops_pads():
    from r1v.data.collate import PairCollator

    tok = SimpleNamespace(eos_token="</s>", pad_token_id=0)
    pad = PadAware([Sample(id="p", question="q", answer="a", meta={"chosen": "x", "rejected": "y"})])[PadIndex(0)]
    assert PairCollator(SimpleNamespace(tokenizer=tok))([pad]) == {"empty": True, "skipped": 0}


def test_grpo_marks_pad_prompts_and_their_completions_weigh_nothing():
    """The sum of the micro-batch losses weighted by ``loss_shares``, with the pads' tokens masked as ``_batch``
    does, equals the loss over the real completions alone, in value and gradient, for every aggregation; a
    micro-batch of pads only contributes nothing."""
    from r1v.rl.grpo import Rollout
    from r1v.rl.policy_loss import grpo_loss
    from r1v.stages.grpo import _Indexed, loss_shares

    idx, sample = _Indexed(_samples(3))[PadIndex(2)]
    assert idx == 2 and type(idx) is int and is_pad(sample) and not is_pad(_Indexed(_samples(3))[2][1])

    torch.manual_seed(0)
    lengths, pads = [3, 5, 2, 4, 6, 1], [False, True, False, False, True, True]
    rollouts = [Rollout(k, [1], [7] * n, float(torch.randn(())), meta={"pad": True} if p else {})
                for k, (n, p) in enumerate(zip(lengths, pads, strict=True))]  # fmt: skip
    t = max(lengths)
    logp = torch.randn(len(lengths), t, requires_grad=True)
    old, ref = logp.detach() + 0.1 * torch.randn(len(lengths), t), torch.randn(len(lengths), t)
    mask = torch.zeros(len(lengths), t)
    for b, n in enumerate(lengths):
        mask[b, t - n :] = 1
    adv = torch.tensor([r.advantage for r in rollouts])
    real = [b for b, p in enumerate(pads) if not p]
    for agg in ("seq_mean", "token_mean", "constant"):
        kw = {"beta": 0.1, "loss_agg": agg, "max_len": t}
        want = grpo_loss(logp[real], old[real], ref[real], adv[real], mask[real], **kw)[0]
        g_want = torch.autograd.grad(want, logp)[0]
        micro = [[0, 1], [2, 3], [4, 5]]  # the last micro-batch holds pads only
        shares = loss_shares([[rollouts[b] for b in mb] for mb in micro], agg)
        assert shares[2] == 0.0
        masked = mask * torch.tensor([0.0 if p else 1.0 for p in pads])[:, None]  # what _batch does to pads
        got = sum(s * grpo_loss(logp[mb], old[mb], ref[mb], adv[mb], masked[mb], **kw)[0]
                  for s, mb in zip(shares, micro, strict=True))  # fmt: skip
        g_got = torch.autograd.grad(got, logp)[0]
        assert float(got) == pytest.approx(float(want), abs=1e-6), agg
        assert torch.allclose(g_got, g_want, atol=1e-6), agg
        assert g_got[[b for b, p in enumerate(pads) if p]].abs().sum() == 0  # nothing flows into a pad


def test_a_resumed_position_counts_on_from_its_checkpoint():
    """Lightning skips on_train_epoch_start for the epoch it resumes in: the position loaded from a checkpoint must
    count on from there by itself, or the resumed run's own next checkpoint saves too few consumed samples and a
    second resume replays the wrong batches (benchmarks/soak.py found it: loss gap 0.3 after two kills)."""
    from r1v.runtime.steps import DataPosition

    pos = DataPosition(batch_size=16, seed=0)
    pos.load_state_dict({"data_position": {"epoch": 0, "consumed": 320}, "skipped": 2})
    for _ in range(40):  # the resumed process trains 40 batches; no epoch start comes
        pos.batches_done += 1
    assert pos.state_dict(epoch=0)["data_position"] == {"epoch": 0, "consumed": 960} and pos.skipped == 2
    pos.start_epoch(1)  # a new epoch starts from its beginning
    assert pos.batches_done == 0


def _two_rank_position(rank: int, init: str, out: str) -> None:
    """One of two gloo ranks: skips of its own, a checkpoint's state from every rank, then a resume."""
    import json

    import torch.distributed as dist

    from r1v.runtime.steps import DataPosition

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    pos = DataPosition(batch_size=4, seed=0)
    pos.skipped, pos.skipped_rows = (3, {"a": "too long"}) if rank == 0 else (5, {"b": "corrupt image"})
    state = pos.state_dict(epoch=0)  # every rank calls it when a checkpoint is saved
    again = DataPosition(batch_size=4, seed=0)
    again.load_state_dict(state)  # the same on every rank: rank 0's copy is the one written and read back
    Path(f"{out}.{rank}").write_text(json.dumps({**state, "resumed": again.skipped}))
    dist.destroy_process_group()


def test_skipped_rows_of_every_rank_reach_the_checkpoint_and_each_rank_resumes_its_count(tmp_path):
    """Only rank 0's checkpoint copy is written, so DataPosition gathers every rank's skips into it: run.json
    counts the rows skipped on any rank, and a resume gives each rank its own count back."""
    import json

    import torch.multiprocessing as mp

    out = str(tmp_path / "state")
    mp.start_processes(_two_rank_position, args=(f"file://{tmp_path / 'rdv'}", out), nprocs=2, start_method="spawn")
    s0, s1 = (json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1))
    assert s0["skipped_rows"] == {"a": "too long", "b": "corrupt image"} == s1["skipped_rows"]
    assert s0["skipped_by_rank"] == [3, 5] and s0["skipped"] == 8
    assert s0["resumed"] == 3 and s1["resumed"] == 5

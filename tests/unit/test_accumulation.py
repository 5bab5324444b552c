"""Gradient accumulation weighs every loss token alike: WindowLoader's read-ahead stamps and the arithmetic of
SFTStage.token_weight over micro-batches and ranks (the end-to-end equality is in tests/integration/test_train.py
and, under DeepSpeed, tests/unit/test_zero3_train_cpu.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from r1v.data.sampler import WindowLoader


def _tokens(i: int) -> dict:
    return {"loss_tokens": i + 1, "i": i}


@pytest.mark.parametrize("workers", [0, 2])
def test_window_loader_stamps_each_batch_with_its_windows_total(workers):
    loader = WindowLoader(list(range(7)), batch_size=1, window=3, collate_fn=lambda s: _tokens(s[0]),
                          num_workers=workers)  # fmt: skip
    got = [(b["i"], b["window_tokens"], b["window_first"]) for b in loader]
    # windows [0, 1, 2], [3, 4, 5] and the short last one [6]: loss tokens 1+2+3, 4+5+6, 7
    assert got == [(0, 6, True), (1, 6, False), (2, 6, False), (3, 15, True), (4, 15, False), (5, 15, False),
                   (6, 7, True)]  # fmt: skip
    assert len(loader) == 7


def test_token_weights_make_one_mean_over_every_token_of_the_step():
    """Two ranks, two micro-batches each, loss tokens (10, 30) and (5, 55), each micro-batch's tokens at losses
    1, 2, 3, 4: with Lightning's 1/accumulate and the ranks' gradient average, the step's loss is the mean over
    all 100 tokens, 3.05 (a mean of the micro-batch means would give 2.5)."""
    from r1v.stages.sft import SFTStage

    per_rank = {0: [10, 30], 1: [5, 55]}
    window = {r: sum(n) for r, n in per_rank.items()}
    strategy = SimpleNamespace(reduce=lambda t, reduce_op: torch.tensor(float(sum(window.values()))))
    trainer = SimpleNamespace(world_size=2, strategy=strategy)
    step, losses = 0.0, iter([1.0, 2.0, 3.0, 4.0])
    for rank, ns in per_rank.items():
        stage = SimpleNamespace(_trainer=trainer, trainer=trainer, accumulate=2, device=torch.device("cpu"),
                                _window_total=1.0)  # fmt: skip
        for i, n in enumerate(ns):
            batch = {"loss_tokens": n, "window_tokens": window[rank], "window_first": i == 0}
            w = SFTStage.token_weight(stage, batch)
            step += next(losses) * w / 2 / 2  # the micro-batch's mean, Lightning's 1/accumulate, 2 ranks averaged
    assert step == pytest.approx((10 * 1 + 30 * 2 + 5 * 3 + 55 * 4) / 100)
    one = SimpleNamespace(world_size=1, strategy=strategy)
    alone = SimpleNamespace(_trainer=one, trainer=one, accumulate=1, device=torch.device("cpu"), _window_total=1.0)
    assert SFTStage.token_weight(alone, {"loss_tokens": 7}) is None  # one batch on one device: the plain mean
    empty = SimpleNamespace(_trainer=trainer, trainer=trainer, accumulate=1, device=torch.device("cpu"),
                            _window_total=1.0)  # fmt: skip
    assert SFTStage.token_weight(empty, {"skipped": 0, "empty": True}) == 0.0  # still all-reduces, weighs 0
    assert empty._window_total == 100.0

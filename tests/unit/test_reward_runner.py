"""The reward runner's contract with reward plugins: what a reward may return, which rewards can go to a worker
process, the inline time limit, and the one-line reports of a failing reward (first failure, end of run)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import torch

from r1v.core.errors import ConfigError
from r1v.core.interfaces import RewardInput
from r1v.rl.rewards import RewardRunner

ALLOWED = "(allowed: a number, or a mapping of part names to numbers)"


def one(x: RewardInput) -> float:
    """Importable: a worker process can get it."""
    return 1.0


def dies_on_die(x: RewardInput) -> float:
    """Ends its worker process (as a segfault or the OOM killer would) on the completion 'die'."""
    if x.completion == "die":
        os._exit(3)
    return 1.0


def _batch(n: int) -> list[RewardInput]:
    return [RewardInput("q", "c", "1", extra={"id": f"s{i}"}) for i in range(n)]


def test_a_number_is_the_rewards_one_part() -> None:
    rewards = {"f": (2.0, lambda x: 0.75), "i": (1.0, lambda x: 3), "t": (1.0, lambda x: torch.tensor(0.5)),
               "np": (0.5, lambda x: np.float32(0.25)),
               "named": (1.0, lambda x: {"named": 1.0, "bonus": 0.5})}  # fmt: skip
    runner = RewardRunner(rewards, isolation="inline")
    parts, totals = runner.score(_batch(2))
    assert parts[0] == {"f": 0.75, "i": 3.0, "t": 0.5, "np": 0.25, "named": 1.0, "bonus": 0.5}
    assert all(type(v) is float for v in parts[0].values())
    assert totals == [2.0 * 0.75 + 3.0 + 0.5 + 0.5 * 0.25 + 1.0] * 2 and not runner.failures


def test_anything_else_is_one_warning_saying_what_came_back(caplog: pytest.LogCaptureFixture) -> None:
    rewards = {"word": (1.0, lambda x: "yes"), "half": (1.0, lambda x: {"half": "0.5"}),
               "vec": (1.0, lambda x: [1.0, 2.0]), "ok": (1.0, lambda x: {"ok": 1.0})}  # fmt: skip
    runner = RewardRunner(rewards, isolation="inline", max_failure_share=None)
    with caplog.at_level(logging.WARNING, logger="r1v.rl.rewards"):
        parts, totals = runner.score(_batch(3))
    assert totals == [1.0, 1.0, 1.0] and parts[0] == {"word": 0.0, "half": 0.0, "vec": 0.0, "ok": 1.0}
    assert runner.first_failure == {"word": f"returned str 'yes' {ALLOWED}",
                                    "half": f"returned part 'half' = str '0.5' {ALLOWED}",
                                    "vec": f"returned list [1.0, 2.0] {ALLOWED}"}  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [
        f"reward '{key}' failed on sample s0: {why} (its part counts 0; later failures of '{key}' are only counted)"
        for key, why in runner.first_failure.items()
    ]


def test_an_unpicklable_reward_is_refused_before_any_worker_starts() -> None:
    class Local:
        def __call__(self, x: RewardInput) -> float:
            return 1.0

    with pytest.raises(ConfigError) as e:
        RewardRunner({"ok": (1.0, one), "mine": (1.0, lambda x: 1.0)}, isolation="process")
    assert str(e.value) == (
        "reward 'mine' (function) cannot be sent to a reward worker process (AttributeError: Can't pickle local "
        "object 'test_an_unpicklable_reward_is_refused_before_any_worker_starts.<locals>.<lambda>'); define it at "
        "module level of an importable module (not a lambda or a class inside a function), or set "
        "stage.reward_isolation=inline"
    )
    with pytest.raises(ConfigError, match=r"^reward 'local' \(Local\) cannot be sent .*Can't pickle local object"):
        RewardRunner({"local": (1.0, Local())}, isolation="process")
    assert not mp.active_children()  # refused before a pool was made
    assert RewardRunner({"local": (1.0, Local())}, isolation="inline").score(_batch(1))[1] == [1.0]


def test_inline_rewards_get_the_time_limit_and_the_same_numbers() -> None:
    def slow(x: RewardInput) -> dict[str, float]:
        if x.extra["id"] == "s1":
            time.sleep(3)
        return {"slow": 0.1}

    def parts(x: RewardInput) -> dict[str, float]:
        return {"parts": 0.3, "extra": 0.7}

    runner = RewardRunner({"slow": (0.7, slow), "parts": (0.3, parts)}, timeout_s=0.2, isolation="inline")
    t = time.perf_counter()
    out, totals = runner.score(_batch(3))
    assert time.perf_counter() - t < 1.5
    assert runner.failures == {"slow": 1} and runner.first_failure["slow"] == "TimeoutError: no result within 0.2 s"
    assert totals == [0.0 + 0.7 * 0.1 + 0.3 * 0.3, 0.0 + 0.7 * 0.0 + 0.3 * 0.3, 0.0 + 0.7 * 0.1 + 0.3 * 0.3]
    assert out[1] == {"slow": 0.0, "parts": 0.3, "extra": 0.7}


def test_summary_names_a_reward_that_failed_on_too_few_calls_to_stop_the_run() -> None:
    def broken(x: RewardInput) -> float:
        raise ValueError("no answer\nsecond line")

    def sometimes(x: RewardInput) -> float:
        if x.extra["id"] == "s0":
            raise ValueError("once")
        return 1.0

    runner = RewardRunner({"broken": (1.0, broken), "sometimes": (1.0, sometimes), "ok": (1.0, lambda x: 1.0)},
                          isolation="inline", max_failure_share=0.5, min_calls=32)  # fmt: skip
    runner.score(_batch(4))  # 4 calls each: under min_calls, so the run would go on and end with exit 0
    assert runner.summary() == [
        "reward 'broken' failed on 4 of 4 calls (100%; its part counted 0 there); first failure: ValueError: no answer"
    ]


def test_a_reward_that_kills_its_worker_is_a_failure_and_the_next_batch_gets_fresh_workers() -> None:
    runner = RewardRunner({"dies": (1.0, dies_on_die)}, timeout_s=30, isolation="process", workers=1,
                          max_failure_share=None)  # fmt: skip
    try:
        _, totals = runner.score([RewardInput("q", "die", "1")])
        assert totals == [0.0] and runner.first_failure["dies"].startswith("worker died (BrokenProcessPool)")
        _, totals = runner.score([RewardInput("q", "ok", "1")] * 2)  # a broken pool refused every later call
        assert totals == [1.0, 1.0] and runner.failures == {"dies": 1}
    finally:
        runner.close(kill=True)

"""Run the configured rewards over completions, with a time limit per call and failures counted.

A reward returns a number (its one part, named like the reward) or a mapping of part names to numbers (the part
named like the reward, or else the sum, is its total); anything else is a failure saying what came back.

``isolation=process`` (default) runs every reward call in a pool of spawned worker processes: a call
gets ``timeout_s`` of wall time (SIGALRM inside the worker, whose main thread runs it, so math-verify's
own signal timeouts work there too); a call that hangs in C code past the batch deadline gets its
worker pool killed and rebuilt. Works off the main thread and under DDP (each rank has its pool). A reward
that cannot be pickled (a lambda, a class defined inside a function) cannot reach a worker: the runner refuses
it when it is made, in one line. ``isolation=inline`` runs calls in the training process (for debugging and
unpicklable rewards), with the same ``timeout_s`` when it runs on the main thread (Python code only).

A call that raises, times out or returns NaN or something that is no number counts as a failure of that reward on
that sample and gives 0 for its part; the first failure of each reward is one warning line, the run continues and
``reward/failures`` is logged. :meth:`RewardRunner.summary` names, at the end, rewards that failed on most calls
but too few calls to stop the run.
"""

from __future__ import annotations

import logging
import math
import numbers
import pickle
import reprlib
from collections import Counter
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from r1v.core.errors import ConfigError, RewardFailureError
from r1v.core.interfaces import RewardInput
from r1v.runtime.workers import WorkerPool, time_limit

log = logging.getLogger(__name__)
ISOLATIONS = ("process", "inline")


ALLOWED = "allowed: a number, or a mapping of part names to numbers"


class _BadReturn(Exception):
    """A reward returned something that is not a number or a mapping of part names to numbers."""


def _number(value: Any) -> float | None:
    """``float(value)`` for a number (int, float, numpy scalar, one-element tensor or array), else None."""
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)  # torch / numpy, without importing them here
    if callable(item):
        try:
            return float(value) if isinstance(item(), numbers.Real) else None
        except (TypeError, ValueError, RuntimeError):  # more than one element
            return None
    return None


def _parts(key: str, out: Any) -> dict[str, float]:
    """A reward's return value as named parts: a number is the one part ``{key: value}``."""
    value = _number(out)
    if value is not None:
        return {key: value}
    if not isinstance(out, Mapping):
        raise _BadReturn(f"returned {type(out).__name__} {reprlib.repr(out)} ({ALLOWED})")
    parts = {}
    for name, v in out.items():
        parts[name] = _number(v)
        if not isinstance(name, str) or parts[name] is None:
            raise _BadReturn(f"returned part {reprlib.repr(name)} = {type(v).__name__} {reprlib.repr(v)} ({ALLOWED})")
    return parts


def _call(fn: Any, key: str, x: RewardInput, timeout_s: float) -> tuple[str, Any]:
    """One reward call, in a worker process or inline: ("ok", parts) | ("error", message). Limited to
    ``timeout_s`` where :func:`time_limit` can be (a main thread: always so in a worker)."""
    try:
        with time_limit(timeout_s):
            out = fn(x)
        return "ok", _parts(key, out)
    except _BadReturn as e:
        return "error", str(e)
    except Exception as e:
        return "error", _error_line(e)


def _error_line(e: BaseException) -> str:
    """'Type: first line of the message': every report of a failure is one line."""
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _pool_error(e: BaseException) -> str:
    if isinstance(e, BrokenProcessPool):  # e.g. a reward crashed the interpreter or ran out of memory
        return f"worker died ({type(e).__name__}); stage.reward_isolation=inline shows the error in this process"
    return (f"could not be run in a worker process ({_error_line(e)}); is the reward or its input "
            f"picklable? stage.reward_isolation=inline runs it in this process")  # fmt: skip


def _check_picklable(key: str, fn: Any) -> None:
    """Spawned workers get each reward pickled; refuse one that cannot be before any worker starts."""
    try:
        pickle.dumps(fn)
    except Exception as e:
        raise ConfigError(
            f"reward '{key}' ({type(fn).__name__}) cannot be sent to a reward worker process ({_error_line(e)}); "
            f"define it at module level of an importable module (not a lambda or a class inside a "
            f"function), or set stage.reward_isolation=inline"
        ) from None


class RewardRunner:
    """``max_failure_share``: once a reward has been called ``min_calls`` times, a failure share above it
    stops the run (a reward that fails on most samples silently turns the signal into noise)."""

    def __init__(self, rewards: Mapping[str, tuple[float, Any]], timeout_s: float = 10.0,
                 isolation: str = "process", workers: int = 2, max_failure_share: float | None = 0.5,
                 min_calls: int = 32) -> None:  # fmt: skip
        if isolation not in ISOLATIONS:
            raise ValueError(f"stage.reward_isolation: '{isolation}' is not allowed (use {', '.join(ISOLATIONS)})")
        self.rewards, self.timeout_s, self.isolation, self.workers = dict(rewards), timeout_s, isolation, workers
        self.max_failure_share, self.min_calls = max_failure_share, min_calls
        self.failures: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.first_failure: dict[str, str] = {}
        self._pool = WorkerPool(workers)
        self._warned: set[str] = set()
        if isolation == "process":
            for key, (_, fn) in self.rewards.items():
                _check_picklable(key, fn)

    def close(self, kill: bool = False) -> None:
        """Stop the worker processes; ``kill=True`` kills them first and waits, so that nothing of the pool
        (processes, semaphores) outlives a process about to end with ``os._exit``."""
        self._pool.close(kill)

    def score(self, inputs: list[RewardInput]) -> tuple[list[dict[str, float]], list[float]]:
        """Per completion: every reward's named parts, and the weighted total."""
        calls = [(i, key, fn) for i in range(len(inputs)) for key, (_, fn) in self.rewards.items()]
        results: dict[tuple[int, str], tuple[str, Any]] = {}
        if self.isolation == "inline":
            for i, key, fn in calls:
                results[i, key] = _call(fn, key, inputs[i], self.timeout_s)
        else:
            futures = {self._pool.submit(_call, fn, key, inputs[i], self.timeout_s): (i, key) for i, key, fn in calls}
            deadline = self.timeout_s * (math.ceil(len(calls) / self.workers) + 1) + 5.0
            done, pending = self._pool.gather(futures, deadline)  # hung past every alarm: the workers are killed
            for f in done:
                try:
                    results[futures[f]] = f.result()
                except Exception as e:  # a worker died, or the call could not be pickled to it
                    results[futures[f]] = ("error", _pool_error(e))
            for f in pending:
                results[futures[f]] = ("error", f"no result within {deadline:.0f} s (worker killed)")
        parts_out: list[dict[str, float]] = []
        totals: list[float] = []
        for i, x in enumerate(inputs):
            parts: dict[str, float] = {}
            total = 0.0
            for key, (weight, _) in self.rewards.items():
                status, value = results[i, key]
                self.calls[key] += 1
                if status == "ok" and not all(math.isfinite(v) for v in value.values()):
                    status, value = "error", "returned a non-finite value"
                if status != "ok":
                    self.failures[key] += 1
                    self.first_failure.setdefault(key, str(value))
                    if key not in self._warned:  # one line per reward, then counted silently
                        self._warned.add(key)
                        sample = x.extra.get("id", f"#{i} of the batch")
                        log.warning("reward '%s' failed on sample %s: %s (its part counts 0; later failures of "
                                    "'%s' are only counted)", key, sample, value, key)  # fmt: skip
                    value = {key: 0.0}
                parts.update(value)
                total += weight * float(value.get(key, sum(value.values())))
            parts_out.append(parts)
            totals.append(total)
        self._check_share()
        return parts_out, totals

    def _check_share(self) -> None:
        if self.max_failure_share is None:
            return
        for key, n in self.calls.items():
            share = self.failures[key] / n
            if n >= self.min_calls and share > self.max_failure_share:
                raise RewardFailureError(
                    f"reward '{key}' failed on {self.failures[key]} of {n} calls ({share:.0%}, above "
                    f"stage.max_reward_failure_share={self.max_failure_share}); first failure: "
                    f"{self.first_failure.get(key, '?')}"
                )

    def summary(self) -> list[str]:
        """One line per reward that failed on every call or on more than ``max_failure_share`` of them (too few
        calls to stop the run): for the end of a run, so that such a reward is not silently 0."""
        lines = []
        for key, n in self.calls.items():
            bad = self.failures[key]
            share = bad / n if n else 0.0
            limit = self.max_failure_share
            if bad and (bad == n or (limit is not None and share > limit)):
                lines.append(f"reward '{key}' failed on {bad} of {n} calls ({share:.0%}; its part counted 0 there); "
                             f"first failure: {self.first_failure.get(key, '?')}")  # fmt: skip
        return lines

    def state_dict(self) -> dict[str, Any]:
        return {"failures": dict(self.failures), "calls": dict(self.calls), "first_failure": self.first_failure}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.failures.update(state.get("failures") or {})
        self.calls.update(state.get("calls") or {})
        self.first_failure.update(state.get("first_failure") or {})

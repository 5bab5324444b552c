"""Spawned worker processes for user plugin code (rewards, scorers), and the time limits around its calls.

One place for what both the reward runner (:mod:`r1v.rl.rewards`) and the scorer pool
(:mod:`r1v.evaluation.sample_scores`) need: spawned workers (a forked copy of a process holding CUDA and
Lightning threads is unsafe), workers that die with the training process, a wall-clock limit on each call that
also stops code stuck in C (which SIGALRM cannot interrupt: the workers are killed), and a pool that is made
lazily and never pickled with its owner.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any


def die_with_parent() -> None:
    """Process initializer: on Linux the process gets SIGKILL when the training process dies (kill -9
    included), so no orphan keeps running or holds the parent's output pipes open."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown still applies
        pass


def _start(setup: Callable[..., Any] | None, args: tuple) -> None:
    """A pool worker's initializer: die with the parent, then the pool's own ``setup(*args)``."""
    die_with_parent()
    if setup is not None:
        setup(*args)


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``TimeoutError`` in this (main) thread after ``seconds`` (SIGALRM; Python-level code only: a long
    C call is interrupted when it returns). A no-op for None/0, off the main thread, or without SIGALRM."""
    usable = seconds and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no result within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class WorkerPool:
    """``workers`` spawned processes, started at the first call. A call (or batch of calls) past its time limit
    gets the workers killed, and a worker that died breaks the whole pool: either way the next call starts fresh
    workers."""

    def __init__(self, workers: int = 2, setup: Callable[..., Any] | None = None, setup_args: tuple = ()) -> None:
        self.workers = workers
        self.setup, self.setup_args = setup, setup_args  # run once in each worker (state its calls share)
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)`` in a worker (``fn`` and ``args`` are pickled to it)."""
        if self._pool is not None:
            try:
                return self._pool.submit(fn, *args)
            except BrokenProcessPool:  # a worker died in an earlier call (a crash, out of memory): the executor
                self.close(kill=True)  # refuses every later call, so start fresh workers
        self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_start,
                                         initargs=(self.setup, self.setup_args))  # fmt: skip
        return self._pool.submit(fn, *args)

    def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None) -> Any:
        """``fn(*args)`` in a worker; past ``timeout_s`` the workers are killed and TimeoutError raised."""
        future = self.submit(fn, *args)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            self.close(kill=True)
            raise TimeoutError(f"no result within {timeout_s:g} s (worker killed)") from None

    def gather(self, futures: Iterable[Future], timeout_s: float) -> tuple[set[Future], set[Future]]:
        """(done, pending) after waiting up to ``timeout_s`` for ``futures``; when some are still pending the
        workers are killed (those calls hang past every limit inside the worker)."""
        done, pending = wait(futures, timeout=timeout_s)
        if pending:
            self.close(kill=True)
        return done, pending

    def close(self, kill: bool = False) -> None:
        """Stop the workers; ``kill=True`` kills them first (a call stuck in C code ignores everything else) and
        waits for them, so that nothing of the pool (processes, semaphores) outlives a process about to end."""
        if self._pool is None:
            return
        if kill:  # ProcessPoolExecutor has no public way to stop a running call
            for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                proc.kill()
        self._pool.shutdown(wait=kill, cancel_futures=True)
        self._pool = None

    def __getstate__(self) -> dict[str, Any]:  # an owner deep-copied (Lightning copies modules) gets no pool
        return {**self.__dict__, "_pool": None}

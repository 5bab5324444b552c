"""Named fault-injection points, so crash-and-resume tests are deterministic (not timing guesses).

``R1V_FAULT_INJECT=<point>:<n>`` makes the process die like ``kill -9`` (``os._exit(137)``, no
clean-up, no flush) at a named point:

- ``before_step:n`` — at the start of the batch that would make optimizer step n+1 (n steps done);
- ``after_step:n`` — right after optimizer step n and the checkpoint callbacks of that batch;
- ``in_checkpoint_write:n`` — inside the save of the step-n checkpoint: the file (under DeepSpeed: the folder,
  by every rank) is fully written to its temporary name but not yet renamed (the previous checkpoint must
  survive);
- ``mid_rollout:n`` — in GRPO step n+1, after generation and before the rewards;
- ``between_rounds:n`` — an iterative-SFT run, right after round n is recorded as finished;
- ``sigint:n`` — not a death: SIGINT to this process at the start of step n+1 (:mod:`r1v.runtime.stop`).

``R1V_POISON`` (below) injects failures that do not kill: a non-finite loss, a failing rollout engine.
:func:`abort_run` is how a run ends after a failure that leaves the device unusable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

ENV = "R1V_FAULT_INJECT"
POINTS = ("before_step", "after_step", "in_checkpoint_write", "mid_rollout", "between_rounds", "sigint")


# R1V_POISON=nan_loss:3 (the loss of step 3) or nan_loss:3+ (of step 3 onwards); engine_error:2 makes the rollout
# engine raise in GRPO step 3 (2 steps done) as a device-side assert would
POISONS = ("nan_loss", "engine_error")
POISON_ENV = "R1V_POISON"


def _spec(env: str, known: tuple[str, ...]) -> tuple[str, str] | None:
    """``<name>:<at>`` from ``env`` (None when unset); an unknown name is refused, listing the known ones."""
    spec = os.environ.get(env, "")
    if not spec:
        return None
    name, _, at = spec.partition(":")
    if name not in known:
        raise ValueError(f"{env}={spec}: unknown point '{name}' (known: {', '.join(known)})")
    return name, at


def poisoned(point: str, index: int) -> bool:
    """True when ``R1V_POISON`` asks for ``point`` at ``index`` (tests of the non-finite guards)."""
    spec = _spec(POISON_ENV, POISONS)
    if spec is None or spec[0] != point:
        return False
    at = spec[1]
    return index >= int(at[:-1]) if at.endswith("+") else index == int(at)


def maybe_die(point: str, step: int) -> None:
    spec = _spec(ENV, POINTS)
    if spec is None:
        return
    name, at = spec
    if name == point and int(at) == step:
        os._exit(137)


def abort_run(line: str, error: BaseException, run_dir: str | os.PathLike[str], loggers: Any = (),
              release: Any = None) -> NoReturn:  # fmt: skip
    """End this process at once after ``error``, with ``line`` as the only thing on stderr and exit status 1.

    For failures after which the device must not be touched again: a CUDA device-side assert kills the
    context, and every later CUDA call — Lightning's teardown moving the model to the CPU, a checkpoint
    callback — raises again and buries the cause under a second traceback. So nothing runs after it: the
    traceback goes to the run's log file (the logging module's file handlers, e.g. Hydra's
    ``<run>/train.log``; ``<run>/error.log`` when there is none), the loggers' rows of finished steps are
    flushed (host-side writes only), ``release()`` frees host resources (worker processes), and checkpoints
    are left as they are (each was written atomically, so ``resume=auto`` continues from the last one).
    ``{log}`` in ``line`` becomes the log's path.
    """
    record = logging.LogRecord("r1v", logging.ERROR, __file__, 0, "%s", (line.replace("{log}", "below"),),
                               (type(error), error, error.__traceback__))  # fmt: skip
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.handle(record)
        handler.flush()
    if files:
        log_path = files[0].baseFilename
    else:
        log_path = str(Path(run_dir) / "error.log")
        with open(log_path, "a") as f:
            f.write(line.replace("{log}", "below") + "\n" + "".join(traceback.format_exception(error)))
    for logger in loggers or ():
        with contextlib.suppress(Exception):  # the rows are a courtesy; the one line below must still come out
            logger.save()
    if release is not None:
        with contextlib.suppress(Exception):
            release()
    sys.stdout.flush()
    sys.stderr.write(f"r1v: error: {line.replace('{log}', os.path.relpath(log_path))}\n")
    sys.stderr.flush()
    os._exit(1)

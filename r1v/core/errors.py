"""Every user error of r1v, and the one function that turns them into one line.

A user error is a mistake in what the user gave — a config value, a file, a checkpoint, a plugin name — and
its message is one line saying what is wrong and what is allowed. The entry points print it as
``r1v: error: <message>`` and exit 2 (:func:`exit_on_user_error`); anything else is a bug and keeps its
traceback. Each class keeps the built-in base it always had, so ``except ValueError`` still catches it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


class ConfigError(ValueError):
    """An override or config value that cannot be used (one line)."""


class RegistryError(LookupError):
    """A name, option or plugin that cannot be resolved. The message is one line for the user."""


class DataError(ValueError):
    """Bad input data (one line: file, line, field, what is allowed)."""


class ModelConfigError(ValueError):
    """The parts do not fit together (one line, naming both sides)."""


class RunError(RuntimeError):
    """A run folder or checkpoint that cannot be used as asked (one line)."""


class NonFiniteError(RunError):
    """Too many non-finite losses or gradients in a row: the run stops, its checkpoints kept."""


class WeightsError(ValueError):
    """A weights file that does not fit the model (one line: file, tensor, shapes)."""


class ScoringError(ValueError):
    """A scorer result that cannot be used (one line: scorer, sample, value, what is allowed)."""


class JudgeError(RuntimeError):
    """The judge endpoint cannot be used (one line: URL, what failed, what to check)."""


class BenchmarkError(ValueError):
    """A benchmark's local copy is missing or not in the expected form (one line)."""


class RewardFailureError(RuntimeError):
    """A reward failed on more than the allowed share of its calls (one line; the run stops)."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    RegistryError,
    DataError,
    ModelConfigError,
    RunError,
    WeightsError,
    ScoringError,
    JudgeError,
    BenchmarkError,
    RewardFailureError,
    FileNotFoundError,
)


def exit_on_user_error(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``; a user error (bad config, data, weights, benchmark copy …) is one line and exit 2."""
    try:
        return fn(*args)
    except USER_ERRORS as e:
        print(f"r1v: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def one_line(error: BaseException) -> str:
    """The error's message; raised in a data-loader worker, torch re-raises it as "Caught X in DataLoader worker
    …" plus the worker's traceback, whose last line is ``module.X: <the message>``: that message alone."""
    text = str(error)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(f"{type(error).__name__}: ", 1)[-1]

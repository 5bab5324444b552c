"""Named fault-injection points, so crash-and-resume tests are deterministic (not timing guesses).

``R1V_FAULT_INJECT=<point>:<n>`` makes the process die like ``kill -9`` (``os._exit(137)``, no
clean-up, no flush) at a named point:

- ``before_step:n`` — at the start of the batch that would make optimizer step n+1 (n steps done);
- ``after_step:n`` — right after optimizer step n and the checkpoint callbacks of that batch;
- ``in_checkpoint_write:n`` — inside the save of the step-n checkpoint: the file (under DeepSpeed: the folder,
  by every rank) is fully written to its temporary name but not yet renamed (the previous checkpoint must
  survive);
- ``mid_rollout:n`` — in GRPO step n+1, after generation and before the rewards;
- ``between_rounds:n`` — an iterative-SFT run, right after round n is recorded as finished.
"""

from __future__ import annotations

import os

ENV = "R1V_FAULT_INJECT"
POINTS = ("before_step", "after_step", "in_checkpoint_write", "mid_rollout", "between_rounds")


POISONS = ("nan_loss",)  # R1V_POISON=nan_loss:3 (the loss of step 3) or nan_loss:3+ (of step 3 onwards)
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

"""Named fault-injection points, so crash-and-resume tests are deterministic (not timing guesses).

``R1V_FAULT_INJECT=before_step:8`` makes the process die like ``kill -9`` (``os._exit(137)``, no
clean-up, no flush) when training reaches optimizer step 8, i.e. after 8 complete steps;
``between_rounds:1`` kills an iterative-SFT run right after round 1 is recorded as finished.
"""

from __future__ import annotations

import os

ENV = "R1V_FAULT_INJECT"
POINTS = ("before_step", "between_rounds")


def maybe_die(point: str, step: int) -> None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return
    name, _, at = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV}={spec}: unknown point '{name}' (known: {', '.join(POINTS)})")
    if name == point and int(at) == step:
        os._exit(137)

"""Length controllers: ``none``, DAPO's soft overlong punishment, R1V's DRLC and a fixed penalty.

A controller shapes length in one or both of two ways: ``sampling_params(scores)`` gives per-sample
sampling knobs before generation (DRLC: a repetition penalty from the sample's difficulty), and
``__call__(length)`` adds a reward term after it (overlong punishment, used by GRPO).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from r1v.core.interfaces import sampling_params  # noqa: F401  (importable from here too)


class NoLengthControl:
    def __call__(self, length: int) -> float:
        return 0.0


class Overlong:
    """DAPO soft overlong punishment: 0 up to max_len − buffer, then linearly to −1 at max_len."""

    def __init__(self, max_len: int, buffer: int) -> None:
        if not 0 < buffer <= max_len:
            raise ValueError(f"length 'overlong': need 0 < buffer ≤ max_len, got buffer={buffer}, max_len={max_len}")
        self.max_len, self.buffer = max_len, buffer

    def __call__(self, length: int) -> float:
        if length <= self.max_len - self.buffer:
            return 0.0
        if length > self.max_len:
            return -1.0
        return (self.max_len - self.buffer - length) / self.buffer


class DRLC:
    """R1V's Dynamic Reasoning Length Controller.

    ``P = min(max_penalty, exp(α · (1 − (Ŝv + β·Ŝt + γ·ŜI) / (1 + β + γ))))`` from the sample's vision,
    text and integration scores, each min-max normalised over the data set (the caller does that).
    Hard, image-dependent questions (scores near 1) get P ≈ 1, so long chains are allowed; easy ones get
    up to ``max_penalty``, which discourages repetitive re-checking. R1V gives no α, β, γ; the default
    α = ln 2 makes P span exactly [1, 2].
    """

    needs_scores = ("vision", "text", "integration")  # per sample, from stage=distill (meta.distill.normalised)

    def __init__(self, alpha: float, beta: float, gamma: float, max_penalty: float) -> None:
        if alpha < 0 or beta < 0 or gamma < 0 or max_penalty < 1:
            raise ValueError(f"length 'drlc': need alpha, beta, gamma ≥ 0 and max_penalty ≥ 1, got alpha={alpha}, "
                             f"beta={beta}, gamma={gamma}, max_penalty={max_penalty}")  # fmt: skip
        self.alpha, self.beta, self.gamma, self.max_penalty = alpha, beta, gamma, max_penalty

    def penalty(self, vision: float, text: float, integration: float) -> float:
        blend = (vision + self.beta * text + self.gamma * integration) / (1 + self.beta + self.gamma)
        return min(self.max_penalty, math.exp(self.alpha * (1 - blend)))

    def sampling_params(self, scores: Mapping[str, float]) -> dict[str, float]:
        return {"repetition_penalty": self.penalty(scores["vision"], scores["text"], scores["integration"])}

    def __call__(self, length: int) -> float:
        return 0.0


class FixedPenalty:
    """The same repetition penalty for every sample (the baseline DRLC is compared with)."""

    def __init__(self, repetition_penalty: float) -> None:
        if repetition_penalty <= 0:
            raise ValueError(f"length 'fixed': repetition_penalty must be > 0, got {repetition_penalty}")
        self.repetition_penalty = repetition_penalty

    def sampling_params(self, scores: Mapping[str, float]) -> dict[str, float]:
        return {"repetition_penalty": self.repetition_penalty}

    def __call__(self, length: int) -> float:
        return 0.0


def drlc(alpha: float = math.log(2), beta: float = 1.0, gamma: float = 1.0, max_penalty: float = 2.0) -> DRLC:
    """R1V's DRLC: per-sample repetition penalty from QDAM/VTIA scores (easy → up to 2, hard → 1)."""
    return DRLC(alpha, beta, gamma, max_penalty)


def fixed(repetition_penalty: float = 1.0) -> FixedPenalty:
    """One repetition penalty for all samples."""
    return FixedPenalty(repetition_penalty)


def none() -> NoLengthControl:
    """No length shaping."""
    return NoLengthControl()


def overlong(max_len: int = 8192, buffer: int = 1024) -> Overlong:
    """DAPO soft overlong punishment added to the reward."""
    return Overlong(max_len, buffer)

"""Rule rewards: answer accuracy and the R1 format (``reasoning</think>answer``)."""

from __future__ import annotations

import re

from r1v import hookimpl
from r1v.answers import equivalent, extract_answer
from r1v.interfaces import RewardInput

_FORMAT = re.compile(r"^(?P<think>.*\S.*?)\s*</think>\s*(?P<answer>.*\\boxed\{.+\}.*)$", re.DOTALL)


class Accuracy:
    """1 when the extracted final answer equals the ground truth, else 0."""

    needs_answer = True

    def __call__(self, x: RewardInput) -> dict[str, float]:
        if x.answer is None:
            raise ValueError("reward 'accuracy' needs the sample's answer")
        return {"accuracy": float(equivalent(extract_answer(x.completion), x.answer))}


class Format:
    """1 when the completion is a non-empty thought, ``</think>``, then a ``\\boxed{}`` answer."""

    def __call__(self, x: RewardInput) -> dict[str, float]:
        return {"format": float(bool(_FORMAT.match(x.completion)) and x.completion.count("</think>") == 1)}


def accuracy() -> Accuracy:
    """Final answer (last \\boxed{} or 'Answer:' line) equals the ground truth."""
    return Accuracy()


def format_reward() -> Format:
    """R1 format: reasoning, </think>, then a \\boxed{} answer."""
    return Format()


@hookimpl
def register_rewards(register):
    register("accuracy", accuracy)
    register("format", format_reward)

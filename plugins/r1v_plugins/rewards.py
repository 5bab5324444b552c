"""Rule rewards: answer accuracy and the R1 format (``reasoning</think>answer``)."""

from __future__ import annotations

import re
from typing import Any

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


class RewardModel:
    """A scalar reward model from a local folder (``AutoModelForSequenceClassification``, e.g. a
    Bradley-Terry RM trained by ``stage=reward_model`` or a Skywork-Reward-style checkpoint): the score of
    (question, completion) through the model's chat template, times ``scale`` plus ``shift``.

    Loaded lazily where it is first called (in the reward worker, or inline), once per process. Text only:
    a vision-language RM needs the images, which this reward passes as nothing (see issue 6).
    """

    def __init__(self, path: str, scale: float, shift: float, device: str, max_length: int) -> None:
        from pathlib import Path

        if not Path(path, "config.json").is_file():
            raise FileNotFoundError(f"reward 'reward_model': {path} is not a model folder (no config.json there)")
        self.path, self.scale, self.shift, self.device, self.max_length = path, scale, shift, device, max_length
        self._model: Any = None

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self._model = AutoModelForSequenceClassification.from_pretrained(self.path, local_files_only=True)
        self._model.to(self.device).eval()

    def __getstate__(self) -> dict[str, Any]:  # workers load their own copy
        return {k: v for k, v in self.__dict__.items() if k not in ("_model", "_tok")} | {"_model": None}

    def __call__(self, x: RewardInput) -> dict[str, float]:
        import torch

        if self._model is None:
            self._load()
        messages = [{"role": "user", "content": x.prompt}, {"role": "assistant", "content": x.completion}]
        try:
            text = self._tok.apply_chat_template(messages, tokenize=False)
        except (ValueError, AttributeError):  # no chat template: plain concatenation
            text = f"{x.prompt}\n{x.completion}"
        enc = self._tok(text, return_tensors="pt", truncation=True, max_length=self.max_length).to(self.device)
        with torch.no_grad():
            score = float(self._model(**enc).logits[0, 0])
        return {"reward_model": self.scale * score + self.shift}


def reward_model(path: str, scale: float = 1.0, shift: float = 0.0, device: str = "cpu",
                 max_length: int = 8192) -> RewardModel:  # fmt: skip
    """Scalar reward model from a local folder (Bradley-Terry head): score × scale + shift."""
    return RewardModel(path, scale, shift, device, max_length)


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
    register("reward_model", reward_model)

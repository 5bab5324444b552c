"""Rule rewards: answer accuracy and the R1 format (``reasoning</think>answer``)."""

from __future__ import annotations

import re
from typing import Any

from r1v import hookimpl
from r1v.core.interfaces import RewardInput
from r1v.evaluation.answers import equivalent, extract_answer

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

    ``path`` may also be an r1v ``stage=reward_model`` run folder: then the trained composition scores the
    prompt *with its images* and the completion. Loaded lazily where it is first called (in the reward
    worker, or inline), once per process; the folder is checked when the reward is built.
    """

    def __init__(self, path: str, scale: float, shift: float, device: str, max_length: int) -> None:
        self.kind = check_reward_folder(path)
        self.path, self.scale, self.shift, self.device, self.max_length = path, scale, shift, device, max_length
        self._model: Any = None

    def _load(self) -> None:
        if self.kind == "r1v":
            from r1v.stages.reward_model import LoadedRewardModel

            self._model = LoadedRewardModel(self.path, self.device)
            return
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
        if self.kind == "r1v":  # the composition sees the images
            from r1v.core.interfaces import Sample

            sample = Sample(str(x.extra.get("id", "rm")), x.prompt, x.answer or "", list(x.images))
            return {"reward_model": self.scale * self._model.score([sample], [x.completion])[0] + self.shift}
        messages = [{"role": "user", "content": x.prompt}, {"role": "assistant", "content": x.completion}]
        try:
            text = self._tok.apply_chat_template(messages, tokenize=False)
        except (ValueError, AttributeError):  # no chat template: plain concatenation
            text = f"{x.prompt}\n{x.completion}"
        enc = self._tok(text, return_tensors="pt", truncation=True, max_length=self.max_length).to(self.device)
        with torch.no_grad():
            score = float(self._model(**enc).logits[0, 0])
        return {"reward_model": self.scale * score + self.shift}


def check_reward_folder(path: str) -> str:
    """'r1v' for a ``stage=reward_model`` run folder, 'hf' for a Hugging Face sequence-classification folder
    with one label; anything else (no folder, no scalar head) is one line naming the path."""
    import json
    from pathlib import Path

    where = f"reward 'reward_model': {path}"
    if Path(path, "config.yaml").is_file() and Path(path, "run.json").is_file():  # an r1v run folder
        from omegaconf import OmegaConf

        stage = OmegaConf.load(Path(path, "config.yaml")).get("stage", {}).get("name")
        if stage != "reward_model":
            raise ValueError(f"{where} is an r1v run of stage '{stage}', which has no scalar head; train one with "
                             "stage=reward_model")  # fmt: skip
        if not Path(path, "final", "trainable.safetensors").is_file():
            raise FileNotFoundError(f"{where}: the reward-model run has no final/trainable.safetensors (unfinished?)")
        return "r1v"
    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(f"{where} is not a model folder (no config.json there) nor a stage=reward_model run")
    cfg = json.loads(Path(path, "config.json").read_text())
    archs = cfg.get("architectures") or []
    labels = cfg.get("num_labels", len(cfg.get("id2label") or {}) or 2)
    if not any(a.endswith("ForSequenceClassification") for a in archs) or labels != 1:
        raise ValueError(
            f"{where} has no scalar head (architectures {archs}, num_labels {labels}); a reward model "
            "is a *ForSequenceClassification folder with num_labels=1 or a stage=reward_model run"
        )
    return "hf"


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

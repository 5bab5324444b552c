"""Offline sample scorers: QDAM's vision and text parts, VTIA's integration score, and two reward-model
stand-ins for iterative SFT (rule checks on the chain on 0–5, and the model's own likelihood).

R1V scores with GPT-4o (except image clarity); these heuristics and model-based judgements are the
offline built-ins, documented so that their numbers can be read. ``openai_judge`` (r1v_plugins.judge)
asks a real judge model instead.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import numpy as np
from PIL import Image

from r1v import hookimpl
from r1v.core.errors import ConfigError
from r1v.core.interfaces import THINK_CLOSE, Sample, ScoreContext
from r1v.evaluation.sample_scores import completion_nll, without_images

_WORD = re.compile(r"[A-Za-z]+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_MATH = re.compile(r"[=+\-*/^<>]|\\frac|\\sqrt|\\sum|\\int|\\times|\\cdot")
_MULTI = re.compile(r"\b(together|total|sum|difference|more than|fewer than|less than|ratio|probability|"
                    r"product|average|both|each|altogether|combined|prove|if)\b", re.IGNORECASE)  # fmt: skip
_WHY_HOW = re.compile(r"\b(why|explain|how(?! many| much))\b", re.IGNORECASE)
_IDENTIFY = re.compile(r"^\s*(what|where|which|who)\b", re.IGNORECASE)
_RELATION = re.compile(r"\b(between|relative|compared?|left of|right of|above|below|next to|together|and)\b",
                       re.IGNORECASE)  # fmt: skip
_IMPERATIVE = re.compile(r"\b(what|how|which|why|where|who|find|compute|calculate|determine|solve|choose|"
                         r"select|count|name|estimate|prove|show)\b", re.IGNORECASE)  # fmt: skip


def _text(sample: Sample) -> str:
    return sample.question.replace("<image>", " ")


def _squash(x: float) -> float:
    """[0, ∞) -> [0, 1): 1 − e^(−x)."""
    return 1.0 - math.exp(-max(x, 0.0))


# -- vision: clarity (blur and resolution) --------------------------------------------------------------


def laplacian_variance(image: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image: low for blurred images."""
    x = np.asarray(image.convert("L"), dtype=np.float32)
    if x.shape[0] < 3 or x.shape[1] < 3:
        return 0.0
    lap = x[1:-1, :-2] + x[1:-1, 2:] + x[:-2, 1:-1] + x[2:, 1:-1] - 4 * x[1:-1, 1:-1]
    return float(lap.var())


class Clarity:
    """QDAM image clarity in [0, 1]: mean of sharpness ``v / (v + blur_ref)`` (v the Laplacian variance)
    and resolution ``min(1, sqrt(w·h) / ref_side)``, averaged over the sample's images; 0 without
    images."""

    scale = "0-1"

    def __init__(self, blur_ref: float, ref_side: int) -> None:
        self.blur_ref, self.ref_side = blur_ref, ref_side

    def one(self, image: Image.Image) -> float:
        v = laplacian_variance(image)
        sharp = v / (v + self.blur_ref)
        res = min(1.0, math.sqrt(image.width * image.height) / self.ref_side)
        return 0.5 * (sharp + res)

    def score(self, samples: list[Sample], ctx: ScoreContext) -> list[float]:
        return [sum(self.one(im) for im in s.images) / len(s.images) if s.images else 0.0 for s in samples]


class ImageNecessity:
    """QDAM image necessity by text-only ablation with the model itself: how much more surprising the
    reference answer is without the images (mean NLL per token without − with; ≥ 0 in practice).
    Questions answerable from the text alone score near 0."""

    needs_model = True  # runs the live model: scored in the training process (no process isolation)

    scale = "unbounded"

    def __init__(self, target: str) -> None:
        self.target = target

    def score(self, samples: list[Sample], ctx: ScoreContext) -> list[float]:
        with_img = completion_nll(ctx, samples, self.target)
        without = completion_nll(ctx, samples, self.target, transform=without_images)
        return [b - a if s.images else 0.0 for s, a, b in zip(samples, with_img, without, strict=True)]


# -- text: quality, difficulty, reasoning demand ---------------------------------------------------------


class QuestionText:
    """QDAM text scores in [0, 1] from question-text features (documented heuristics).

    * ``quality``: starts at 1; −0.5 under 3 words, −0.3 over 300, −0.2 without a question word or
      question mark, −0.3 when more than half the words repeat, −0.3 when over 10% of characters
      are not printable text.
    * ``difficulty``: 1 − e^(−x), x = 0.3·numbers + 0.4·math operators + 0.7·multi-step cues
      (together, total, difference, ratio, …) + words / 40.
    * ``reasoning_demand``: 1 − e^(−x), x = 1.0·why/how/explain + 0.7·multi-step cues + 0.3·clauses
      (commas, "and", "then") + 0.3·numbers.
    """

    scale = "0-1"
    ASPECTS = ("quality", "difficulty", "reasoning_demand")

    def __init__(self, aspect: str) -> None:
        if aspect not in self.ASPECTS:
            raise ValueError(f"scorer question_text: aspect '{aspect}' is not allowed ({', '.join(self.ASPECTS)})")
        self.aspect = aspect

    def one(self, text: str) -> float:
        words = _WORD.findall(text)
        numbers, ops, multi = len(_NUMBER.findall(text)), len(_MATH.findall(text)), len(_MULTI.findall(text))
        if self.aspect == "quality":
            q = 1.0
            q -= 0.5 if len(words) < 3 else 0.0
            q -= 0.3 if len(words) > 300 else 0.0
            q -= 0.2 if not ("?" in text or _IMPERATIVE.search(text)) else 0.0
            q -= 0.3 if words and len({w.lower() for w in words}) < 0.5 * len(words) else 0.0
            bad = sum(not (c.isprintable() or c.isspace()) for c in text)
            q -= 0.3 if text and bad > 0.1 * len(text) else 0.0
            return max(0.0, q)
        if self.aspect == "difficulty":
            return _squash(0.3 * numbers + 0.4 * ops + 0.7 * multi + len(words) / 40)
        clauses = text.count(",") + len(re.findall(r"\b(and|then)\b", text, re.IGNORECASE))
        return _squash(1.0 * len(_WHY_HOW.findall(text)) + 0.7 * multi + 0.3 * clauses + 0.3 * numbers)

    def score(self, samples: list[Sample], ctx: ScoreContext) -> list[float]:
        return [self.one(_text(s)) for s in samples]


class ModelDifficulty:
    """Difficulty judged by the model itself: mean NLL per token of the reference answer given image
    and question (unbounded; min-max normalised with the rest)."""

    needs_model = True  # runs the live model: scored in the training process (no process isolation)

    scale = "unbounded"

    def score(self, samples: list[Sample], ctx: ScoreContext) -> list[float]:
        return completion_nll(ctx, samples, "answer")


# -- VTIA: visual-textual integration --------------------------------------------------------------------


class VTIA:
    """VTIA integration score in [0, 1]: high for why/how questions, several related objects and domain
    terms; low for plain what/where identification. x = 1.0·why/how + 0.5·relations (and, between,
    left of, together, …) + 0.6·domain terms + 0.4·(objects named − 1); score 1 − e^(−x), halved
    for a question that opens with what/where/which/who and has no relation."""

    scale = "0-1"

    def __init__(self, domain_terms: list[str], object_terms: list[str]) -> None:
        self.domain = {t.lower() for t in domain_terms}
        self.objects = {t.lower() for t in object_terms}

    def one(self, text: str) -> float:
        words = [w.lower() for w in _WORD.findall(text)]
        singular = [w[:-1] if w.endswith("s") and w[:-1] in self.objects else w for w in words]
        objects = len({w for w in singular if w in self.objects})
        relations = len(_RELATION.findall(text))
        x = 1.0 * len(_WHY_HOW.findall(text)) + 0.5 * relations + 0.6 * sum(w in self.domain for w in words)
        x += 0.4 * max(objects - 1, 0)
        score = _squash(x)
        return score / 2 if _IDENTIFY.match(text) and relations == 0 else score

    def score(self, samples: list[Sample], ctx: ScoreContext) -> list[float]:
        return [self.one(_text(s)) for s in samples]


# -- reward-model stand-ins for iterative SFT --------------------------------------------------------------


class ChainRules:
    """A 0–5 rule score of a sample's reasoning chain, one point each: the chain is non-empty; it
    states the answer in its last sentence; no sentence repeats; its length is within
    [min_words, max_words]; it uses a word of the question (grounded)."""

    scale = "0-5"

    def __init__(self, min_words: int, max_words: int) -> None:
        self.min_words, self.max_words = min_words, max_words

    def one(self, s: Sample) -> float:
        chain = (s.reasoning or "").split(THINK_CLOSE)[0].strip()
        if not chain:
            return 0.0
        sentences = [x.strip().lower() for x in re.split(r"(?<=[.!?])\s+", chain) if x.strip()]
        points = 1.0
        points += float(bool(sentences) and s.answer.strip().lower() in sentences[-1])
        points += float(len(sentences) == len(set(sentences)))
        points += float(self.min_words <= len(_WORD.findall(chain)) <= self.max_words)
        q = {w.lower() for w in _WORD.findall(_text(s)) if len(w) > 3}
        points += float(bool(q & {w.lower() for w in _WORD.findall(chain)}))
        return points

    def score(self, samples: list[Sample], ctx: ScoreContext) -> list[float]:
        return [self.one(s) for s in samples]


class ModelLikelihood:
    """The model itself as reward model: minus the NLL of the sample's chain and answer, per token on average
    (``reduce=mean``) or at the most surprising token (``reduce=max``). Unbounded (a log-likelihood), so use it
    with ``rm.calibration=quantile``."""

    needs_model = True  # runs the live model: scored in the training process (no process isolation)

    scale = "unbounded"

    def __init__(self, reduce: str = "mean") -> None:
        if reduce not in ("mean", "max"):
            raise ConfigError(f"scorer model_likelihood: reduce '{reduce}' is not one of mean, max")
        self.reduce = reduce

    def score(self, samples: list[Sample], ctx: ScoreContext) -> list[float]:
        return [-v for v in completion_nll(ctx, samples, "reasoning", reduce=self.reduce)]


class TrainedRewardModel:
    """A ``stage=reward_model`` run folder as iterative SFT's reward model (R1V scores with a trained RM): the
    Bradley-Terry score of each sample's chain and answer (completion ``chain</think>\\boxed{answer}``, as the
    pairs of ``data=synthetic_pairs style=reasoning`` / ``data=synthetic_hard_pairs`` are written), with the
    sample's images. Unbounded (a logit): use ``rm.calibration=quantile``. Loaded on first use."""

    scale = "unbounded"

    def __init__(self, path: str, device: str, batch_size: int) -> None:
        self.path, self.device, self.batch_size = path, device, batch_size
        self._model = None

    def score(self, samples: list[Sample], ctx: ScoreContext) -> list[float]:
        from r1v.data.processor import boxed
        from r1v.stages.reward_model import LoadedRewardModel

        if self._model is None:
            self._model = LoadedRewardModel(self.path, self.device)
        out: list[float] = []
        for i in range(0, len(samples), self.batch_size):
            chunk = samples[i : i + self.batch_size]
            texts = [f"{s.reasoning or ''}\n{THINK_CLOSE}\n\n{boxed(s.answer)}" for s in chunk]
            out += self._model.score(chunk, texts)
        return out


# -- factories -------------------------------------------------------------------------------------------


def clarity(blur_ref: float = 100.0, ref_side: int = 448) -> Clarity:
    """QDAM image clarity: Laplacian-variance sharpness and resolution, [0, 1]."""
    return Clarity(blur_ref, ref_side)


def image_necessity(target: str = "answer") -> ImageNecessity:
    """QDAM image necessity: answer NLL without the images minus with them (text-only ablation)."""
    return ImageNecessity(target)


def question_quality() -> QuestionText:
    """QDAM text quality from question-text features, [0, 1]."""
    return QuestionText("quality")


def question_difficulty() -> QuestionText:
    """QDAM text difficulty from question-text features, [0, 1]."""
    return QuestionText("difficulty")


def reasoning_demand() -> QuestionText:
    """QDAM reasoning demand from question-text features, [0, 1]."""
    return QuestionText("reasoning_demand")


def model_difficulty() -> ModelDifficulty:
    """Difficulty judged by the model: NLL of the reference answer (unbounded)."""
    return ModelDifficulty()


DEFAULT_OBJECTS = ["circle", "square", "triangle", "shape", "object", "line", "angle", "graph", "bar", "point",
                   "person", "car", "table", "chart", "axis", "curve", "cell", "region"]  # fmt: skip
DEFAULT_DOMAIN = ["area", "perimeter", "radius", "diameter", "slope", "velocity", "force", "probability", "ratio",
                  "function", "integral", "derivative", "theorem", "molecule", "circuit", "voltage"]  # fmt: skip


def vtia(domain_terms: list[str] | None = None, object_terms: list[str] | None = None) -> VTIA:
    """VTIA visual-textual integration: why/how, related objects, domain terms; [0, 1]."""
    return VTIA(list(domain_terms or DEFAULT_DOMAIN), list(object_terms or DEFAULT_OBJECTS))


def chain_rules(min_words: int = 5, max_words: int = 400) -> ChainRules:
    """Reward-model stand-in on R1V's 0–5 scale: five rule checks of the reasoning chain."""
    return ChainRules(min_words, max_words)


def model_likelihood(reduce: Literal["mean", "max"] = "mean") -> ModelLikelihood:
    """The model as reward model: log-likelihood of the chain, per token (mean) or at its worst token (max);
    unbounded: calibrate with quantiles."""
    return ModelLikelihood(reduce)


def trained_reward_model(path: str, device: str = "cpu", batch_size: int = 32) -> TrainedRewardModel:
    """A stage=reward_model run scoring each chain + answer with the image (unbounded: calibrate with quantiles)."""
    return TrainedRewardModel(path, device, batch_size)


@hookimpl
def register_scorers(register):
    register("clarity", clarity)
    register("image_necessity", image_necessity)
    register("question_quality", question_quality)
    register("question_difficulty", question_difficulty)
    register("reasoning_demand", reasoning_demand)
    register("model_difficulty", model_difficulty)
    register("vtia", vtia)
    register("chain_rules", chain_rules)
    register("model_likelihood", model_likelihood)
    register("trained_reward_model", trained_reward_model)

"""Small shared types that plugins produce and consume. No heavy imports here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

# Special tokens every backbone's tokenizer must know (added when missing, see model/tokens.py).
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER = "<image>"  # what users write in questions; expanded to IMG_START + contexts + IMG_END
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Audio (issue 26): added to the tokenizer at run time, only when an audio encoder is composed, so the shipped
# tokenizer files of the image-only default stay byte-identical.
AUD_START, AUD_END, AUDIO_CONTEXT = "<aud>", "</aud>", "<audio_ctx>"
AUDIO_PLACEHOLDER = "<audio>"  # expanded to AUD_START + AUDIO_CONTEXT × (tokens of the clip) + AUD_END
# Video: frames go through the vision encoder as image tiles, so no new token: "Frame k: <img>…</img>" per frame
VIDEO_PLACEHOLDER = "<video>"


@dataclass
class AudioClip:
    """A decoded clip: mono float32 samples in [-1, 1] at ``sampling_rate`` Hz (resampled later, by the processor,
    to the encoder's rate)."""

    samples: Any  # np.ndarray (n,)
    sampling_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sampling_rate


@dataclass
class Sample:
    """One training/evaluation example, the documented JSONL schema in memory.

    ``question`` holds one ``<image>`` per entry of ``images`` (prepended when absent).
    ``reasoning`` is the worked chain for ``<think>`` (optional); ``answer`` the verifiable answer.
    """

    id: str
    question: str
    answer: str
    images: list[Image.Image] = field(default_factory=list)
    reasoning: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    image_paths: list[str] = field(default_factory=list)  # where the images came from (absolute), if files
    audios: list[AudioClip] = field(default_factory=list)  # one <audio> each in ``question`` (prepended when absent)
    audio_paths: list[str] = field(default_factory=list)
    videos: list[list[Image.Image]] = field(default_factory=list)  # sampled frames per video; one <video> each
    video_paths: list[str] = field(default_factory=list)


@runtime_checkable
class VisionEncoder(Protocol):
    """An ``nn.Module``; the model builder checks this contract when it is built (r1v.model.contract)."""

    image_size: int  # tile side in pixels
    grid_size: int  # patches per side
    hidden_size: int

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (N,3,S,S) -> (N,g,g,C)
        ...


@runtime_checkable
class Adapter(Protocol):
    """An ``nn.Module``; T = (grid_size · downsample_ratio)² tokens per tile, the ``<IMG_CONTEXT>`` slots the
    processor inserts. The model builder checks this contract when it is built (r1v.model.contract)."""

    downsample_ratio: float  # grid_size · downsample_ratio must be a whole number
    in_features: int  # width of the encoder features it expects (before pixel shuffle)
    out_features: int  # backbone hidden size it produces

    def __call__(self, features: torch.Tensor) -> torch.Tensor:  # (N,g,g,C) -> (N,T,D)
        ...


@dataclass
class LanguageBackbone:
    """A causal LM (Hugging Face ``PreTrainedModel`` with ``generate``) and how to prompt it.

    ``chat_template`` is a Jinja template used by ``tokenizer.apply_chat_template``; for R1-style
    reasoners its generation prompt ends with ``<think>\\n`` (the pre-filled assistant turn).
    """

    model: Any
    tokenizer: Any
    chat_template: str | None = None
    reasoning: bool = True  # R1 format: completions are "<reasoning></think>\n\n<answer>"

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


@dataclass
class RewardInput:
    """Everything a reward may look at for one completion."""

    prompt: str
    completion: str
    answer: str | None
    images: list[Image.Image] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # the sample's media files (paths, as the data gave them); empty by default so plugins written before them work
    audios: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, sample: Sample, completion: str, **extra: Any) -> RewardInput:
        """What a reward sees of ``sample`` and one of its completions (``extra`` is added to its meta)."""
        return cls(prompt=sample.question, completion=completion, answer=sample.answer, images=sample.images,
                   extra={**sample.meta, **extra}, audios=list(sample.audio_paths),
                   videos=list(sample.video_paths))  # fmt: skip


@dataclass
class ScoreContext:
    """What model-based scorers and revisers may use: the current model (eval mode), its processor,
    a rollout engine and the generation budget. Heuristic scorers ignore it."""

    model: Any = None
    processor: Any = None
    engine: Any = None
    max_new_tokens: int = 128
    batch_size: int = 32


@runtime_checkable
class LengthController(Protocol):
    """A length controller (``stage.length`` / ``distill.length``): ``length -> reward term`` after generation
    (0 for controllers that only set knobs); it may also give per-sample sampling knobs before generation by a
    ``sampling_params(scores) -> {"repetition_penalty": …}`` method (DRLC), read by :func:`sampling_params` for
    every prompt. ``scores`` are the row's ``meta.distill.normalised`` ({} when it has none); a controller that
    cannot work without some names them in a ``needs_scores`` tuple, and a run whose data lacks them is refused
    at start in one line."""

    def __call__(self, length: int) -> float: ...


def sampling_params(controller: object, scores: Mapping[str, float]) -> dict[str, float]:
    """The controller's per-sample sampling knobs ({} for controllers that only shape rewards)."""
    fn = getattr(controller, "sampling_params", None)
    return dict(fn(scores)) if fn else {}


@runtime_checkable
class RunOnceStage(Protocol):
    """A stage that runs once, outside Lightning's loop (``stage=reassemble``): ``run_stage(run_dir)`` does all of
    its work and writes its outputs into the run folder."""

    def run_stage(self, run_dir: Any) -> None: ...


@runtime_checkable
class TrainingStage(Protocol):
    """A stage that Lightning fits (align/SFT, GRPO, MPO, …): a ``lightning.LightningModule`` that also takes its data
    sets (``attach_data(train, val)``), builds its model idempotently (``configure_model()``, so DeepSpeed ZeRO-3
    can shard it at construction) and writes its trained weights (``export_trainable(path)``)."""

    def attach_data(self, train: Any, val: Any) -> None: ...

    def configure_model(self) -> None: ...

    def export_trainable(self, path: Any) -> None: ...

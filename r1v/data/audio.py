"""Audio clips → encoder inputs: decoding (soundfile), resampling (soxr), log-mel windows (transformers'
``WhisperFeatureExtractor``, built offline from the encoder's numbers) and how many ``<audio_ctx>`` tokens a clip
costs.

A clip is cut into windows of the encoder's fixed length (``audio.long_clips=split``; ``refuse`` makes a longer clip
a bad sample). Every window is zero-padded to full length, as Whisper was trained; its tokens that lie wholly in
the padding are dropped (:func:`tokens_for`), so the prompt holds one ``<audio_ctx>`` per token of real audio.
The last kept token may average a few padded frames (pooling); that is the price of not masking the encoder.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch

from r1v.core.interfaces import AudioClip

LongClips = Literal["split", "refuse"]
LONG_CLIPS: tuple[str, ...] = ("split", "refuse")
BATCH_KEYS = ("audio_features", "audio_frames")  # what the model's forward takes (VisionLanguageModel.embed)


def decode(path: str | Path | BinaryIO) -> AudioClip:
    """A file (or a file object: bytes from a column) -> a mono float32 clip at its own rate (channels averaged).
    soundfile's errors pass through."""
    import soundfile

    data, rate = soundfile.read(_source(path), dtype="float32", always_2d=True)  # (n, channels)
    return AudioClip(data.mean(axis=1), int(rate))


def probe(path: str | Path | BinaryIO) -> int:
    """The number of frames of an audio file (or file object), from its header (raises on one soundfile cannot
    read)."""
    import soundfile

    return int(soundfile.info(_source(path)).frames)


def _source(path: str | Path | BinaryIO) -> str | BinaryIO:
    return str(path) if isinstance(path, str | Path) else path


def tokens_for(valid_frames: int, frames_per_token: int) -> int:
    """``<audio_ctx>`` tokens of a window with ``valid_frames`` real mel frames: every token that sees one."""
    return math.ceil(valid_frames / frames_per_token)


@dataclass(frozen=True)
class AudioSpec:
    """What the processor needs from the audio encoder (its attributes, see ``register_audio_encoders``) and the
    ``audio.long_clips`` rule."""

    n_mels: int
    sampling_rate: int
    hop_length: int
    window_frames: int
    frames_per_token: int
    long_clips: str = "split"

    @classmethod
    def of(cls, encoder: Any, long_clips: str = "split") -> AudioSpec:
        if long_clips not in LONG_CLIPS:
            raise ValueError(f"audio.long_clips: '{long_clips}' is not allowed (use split or refuse)")
        return cls(int(encoder.n_mels), int(encoder.sampling_rate), int(encoder.hop_length),
                   int(encoder.window_frames), int(encoder.frames_per_token), long_clips)  # fmt: skip

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.hop_length

    @functools.cached_property
    def extractor(self) -> Any:
        from transformers import WhisperFeatureExtractor

        extractor = WhisperFeatureExtractor(feature_size=self.n_mels, sampling_rate=self.sampling_rate,
                                            hop_length=self.hop_length,
                                            chunk_length=max(1, self.window_samples // self.sampling_rate))  # fmt: skip
        extractor.n_samples, extractor.nb_max_frames = self.window_samples, self.window_frames  # exact, any window
        return extractor

    def features(self, clip: AudioClip) -> tuple[torch.Tensor, list[int]]:
        """One clip -> its windows' log-mel features (n_windows, n_mels, window_frames) and the real (unpadded) mel
        frames of each window. Raises ValueError on an empty clip, or a long one under ``long_clips=refuse``."""
        wave = np.asarray(clip.samples, dtype=np.float32)
        if wave.size == 0:
            raise ValueError("empty audio: the clip has no samples")
        if clip.sampling_rate != self.sampling_rate:  # the extractor takes one rate only
            import soxr

            wave = soxr.resample(wave, clip.sampling_rate, self.sampling_rate).astype(np.float32)
        n = self.window_samples
        if len(wave) > n and self.long_clips == "refuse":
            raise ValueError(f"audio too long: a clip of {len(wave) / self.sampling_rate:g} s is longer than the "
                             f"encoder's window of {n / self.sampling_rate:g} s (audio.long_clips=split cuts it "
                             "into windows)")  # fmt: skip
        windows = [wave[i : i + n] for i in range(0, len(wave), n)]
        out = self.extractor(windows, sampling_rate=self.sampling_rate, return_tensors="np", padding="max_length",
                             return_attention_mask=True)  # fmt: skip
        feats = torch.from_numpy(out["input_features"]).float()  # (n_windows, n_mels, window_frames)
        # the extractor's mask is per sample; a mel frame is real when its hop starts inside the clip
        frames = [min(math.ceil(len(w) / self.hop_length), self.window_frames) for w in windows]
        return feats, frames

    def tokens(self, frames: list[int]) -> int:
        """``<audio_ctx>`` tokens of one clip whose windows have ``frames`` real mel frames each."""
        return sum(tokens_for(f, self.frames_per_token) for f in frames)


def audio_batch(encoded: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The audio of encoded samples, in token order: ``audio_features`` (all windows, (N, n_mels, W)),
    ``audio_frames`` ((N,) real mel frames per window) and ``audio_windows`` (windows per clip); {} without audio,
    so an image-only batch is exactly what it was."""
    feats = [e["audio_features"] for e in encoded if e.get("audio_features") is not None]
    if not feats:
        return {}
    frames = [f for e in encoded for f in e.get("audio_frames") or []]
    windows = [w for e in encoded for w in e.get("audio_windows") or []]
    return {"audio_features": torch.cat(feats), "audio_frames": torch.tensor(frames, dtype=torch.long),
            "audio_windows": windows}  # fmt: skip


def audio_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch's audio keyword arguments for the model's forward ({} for a batch without audio)."""
    return {k: batch[k] for k in BATCH_KEYS if batch.get(k) is not None}

"""Audio encoders and audio adapters (issue 26; model code: r1v.model.parts.whisper, r1v.model.parts.audio_mlp)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.model.parts.audio_mlp import audio_mlp
from r1v.model.parts.whisper import whisper


@hookimpl
def register_audio_encoders(register):
    register("whisper", whisper, "Whisper's encoder (transformers) from a preset or a local folder, avg-pooled")


@hookimpl
def register_audio_adapters(register):
    register("mlp", audio_mlp, "R1V's MLP shape for audio tokens: LayerNorm → Linear → GELU → Linear")

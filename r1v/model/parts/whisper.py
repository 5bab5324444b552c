"""A Whisper-style audio encoder: transformers' ``WhisperEncoder`` (built from a ``WhisperConfig``, or the encoder of
a local Whisper checkpoint folder) followed by an average pool over time.

Whisper takes fixed windows of ``2 · max_source_positions`` log-mel frames (3,000 frames = 30 s at hop 160 and
16 kHz); its two convolutions halve the frame rate (one encoder frame per 20 ms), and ``pool`` (avg-pool stride)
divides it again, so a window gives ``ceil(max_source_positions / pool)`` tokens: ``frames_per_token = 2 · pool``
mel frames each. Shorter clips are zero-padded to the window by the feature extractor (as Whisper was trained:
the encoder attends to the padding, it has no attention mask); the model then drops the tokens that lie wholly in
the padding (:func:`r1v.data.audio.tokens_for`), so a short clip costs few prompt tokens.

The tiny preset (``audio=whisper_tiny``) shortens the window to ``chunk_length`` seconds, which is only possible
for random weights: a pretrained encoder's position table fixes its window.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r1v.model.parts import tiny

# name -> WhisperConfig encoder numbers (d_model, layers, heads, ffn, n_mels); chunk_length in seconds
PRESETS: dict[str, dict[str, Any]] = {
    name: dict(
        d_model=d, encoder_layers=n, encoder_attention_heads=h, encoder_ffn_dim=f, num_mel_bins=m, chunk_length=c
    )
    for name, (d, n, h, f, m, c) in {
        "tiny_r1v": (64, 2, 4, 256, 80, 4),  # r1v's test size: a 4 s window
        "tiny": (384, 4, 6, 1536, 80, 30),
        "base": (512, 6, 8, 2048, 80, 30),
        "large-v3": (1280, 32, 20, 5120, 128, 30),
    }.items()
}


class WhisperAudioEncoder(nn.Module):
    """(N, n_mels, window_frames) log-mel windows -> (N, ceil(window_frames / frames_per_token), hidden_size)."""

    def __init__(self, encoder: nn.Module, pool: int, sampling_rate: int, hop_length: int) -> None:
        super().__init__()
        self.encoder = encoder
        cfg = encoder.config
        self.pool = pool
        self.hidden_size = int(cfg.d_model)
        self.n_mels = int(cfg.num_mel_bins)
        self.sampling_rate, self.hop_length = sampling_rate, hop_length
        self.window_frames = 2 * int(cfg.max_source_positions)  # the two convolutions' stride is 2 overall
        self.frames_per_token = 2 * pool

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(features).last_hidden_state  # (N, W/2, C)
        if self.pool == 1:
            return hidden
        pooled = nn.functional.avg_pool1d(hidden.transpose(1, 2), self.pool, self.pool, ceil_mode=True)
        return pooled.transpose(1, 2)  # (N, ceil(W / (2·pool)), C)


def _encoder_config(values: dict[str, Any]) -> Any:
    from transformers import WhisperConfig

    # dropout and layer drop off: a frozen encoder in train mode must not draw random numbers
    return WhisperConfig(**values, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0)


def _load_folder(folder: Path) -> Any:
    """The encoder of a local Whisper checkpoint folder (config.json + *.safetensors), the decoder's weights left
    on disk: keys ``model.encoder.*`` (WhisperForConditionalGeneration), ``encoder.*`` (WhisperModel) or bare."""
    from safetensors.torch import load_file
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if not (folder / "config.json").is_file():
        raise ValueError(f"audio 'whisper': {folder} has no config.json (pretrained= takes a local Whisper folder)")
    cfg = WhisperConfig.from_pretrained(str(folder), local_files_only=True)
    for key in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop"):
        setattr(cfg, key, 0.0)
    encoder = WhisperEncoder(cfg)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            for prefix in ("model.encoder.", "encoder.", ""):
                if k.startswith(prefix) and (k[len(prefix) :] in encoder.state_dict()):
                    state[k[len(prefix) :]] = v
                    break
    missing = sorted(set(encoder.state_dict()) - set(state))
    if missing:
        raise ValueError(f"audio 'whisper': {folder} lacks encoder weights ({len(missing)} missing, e.g. {missing[0]})")
    encoder.load_state_dict(state)
    return encoder


def whisper(preset: str = "base", pretrained: str | None = None, pool: int = 1, chunk_length: int | None = None,
            sampling_rate: int = 16000, hop_length: int = 160, seed: int = 0) -> WhisperAudioEncoder:  # fmt: skip
    """Whisper's encoder + avg-pool over time: a preset's numbers with random weights, or a local checkpoint folder
    (``builtin``: the shipped tiny one).

    ``chunk_length`` (seconds) overrides the preset's window (random weights only); ``pool`` is the avg-pool stride
    over encoder frames (tokens per second = sampling_rate / hop_length / 2 / pool).
    """
    if pool < 1:
        raise ValueError(f"audio 'whisper': pool must be ≥ 1, got {pool}")
    if pretrained:
        # builtin: the tiny encoder pre-trained on synthetic beeps (tools/pretrain_tiny.py --only audio)
        folder = tiny.HERE / tiny.AUDIO_FOLDER if pretrained == "builtin" else Path(pretrained)
        if not folder.is_dir():
            raise ValueError(f"audio 'whisper': pretrained={pretrained} is not a folder")
        encoder = _load_folder(folder)
        pre = folder / "preprocessor_config.json"
        if pre.is_file():  # the checkpoint's own feature settings win over the knobs
            values = json.loads(pre.read_text())
            sampling_rate, hop_length = (
                int(values.get("sampling_rate", sampling_rate)),
                int(values.get("hop_length", hop_length)),
            )
        window = 2 * encoder.config.max_source_positions
        if chunk_length is not None and chunk_length * sampling_rate != window * hop_length:
            raise ValueError(
                f"audio 'whisper': chunk_length={chunk_length} s does not match the checkpoint's "
                f"window of {window} mel frames ({window * hop_length / sampling_rate:g} s); drop it"
            )
        return WhisperAudioEncoder(encoder, pool, sampling_rate, hop_length)
    if preset not in PRESETS:
        raise ValueError(f"audio 'whisper': unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    values = dict(PRESETS[preset])
    seconds = chunk_length if chunk_length is not None else values.pop("chunk_length")
    values.pop("chunk_length", None)
    frames = seconds * sampling_rate / hop_length
    if frames != int(frames) or int(frames) % 2:
        raise ValueError(f"audio 'whisper': chunk_length={seconds} s is {frames:g} mel frames; it must be an even "
                         f"whole number (hop_length {hop_length}, sampling_rate {sampling_rate})")  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # same weights for the same seed, whatever ran before
        torch.manual_seed(seed)
        encoder = WhisperEncoder(_encoder_config({**values, "max_source_positions": math.ceil(frames / 2)}))
    return WhisperAudioEncoder(encoder, pool, sampling_rate, hop_length)

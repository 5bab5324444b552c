"""The audio adapter: R1V's ``mlp1`` shape (LayerNorm → Linear → GELU → Linear) over audio encoder tokens, with its
own widths. Unlike the image adapter there is no pixel shuffle: the encoder's ``pool`` knob already sets how many
tokens a second of audio costs."""

from __future__ import annotations

import torch
from torch import nn

from r1v.runtime.weights import load_into


class AudioMLP(nn.Sequential):
    """(N, T, in_features) -> (N, T, out_features); parameter names ``0``, ``1``, ``3`` as in ``mlp1``."""

    def __init__(self, in_features: int, llm_hidden: int, hidden: int | None = None) -> None:
        hidden = hidden or llm_hidden
        super().__init__(nn.LayerNorm(in_features), nn.Linear(in_features, hidden), nn.GELU(),
                         nn.Linear(hidden, llm_hidden))  # fmt: skip
        self.in_features, self.out_features = in_features, llm_hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens)


def audio_mlp(audio_hidden: int, llm_hidden: int, hidden: int | None = None, in_features: int | None = None,
              pretrained: str | None = None) -> AudioMLP:  # fmt: skip
    """R1V's MLP projector for audio tokens: LayerNorm → Linear → GELU → Linear.

    ``hidden`` is the intermediate width (default: the backbone's); ``in_features`` pins the encoder width this
    adapter expects (default: the encoder's), refused by the builder on a mismatch.
    """
    adapter = AudioMLP(in_features or audio_hidden, llm_hidden, hidden)
    if pretrained:
        load_into(adapter, pretrained, "audio_adapter 'mlp'")
    return adapter

"""Adapters from vision grid features to backbone token embeddings.

``mlp`` is R1V's / InternVL's ``mlp1``: pixel shuffle (scale 0.5 folds each 2×2 patch block into
one token, 4× wider), then LayerNorm → Linear → GELU → Linear. Its parameter names (``0``, ``1``,
``3``) match InternVL checkpoints' ``mlp1.{0,1,3}``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from r1v.runtime.weights import load_into


def pixel_shuffle(x: torch.Tensor, scale: float = 0.5, ps_version: str = "v2") -> torch.Tensor:
    """InternVL pixel shuffle: (N,h,w,C) -> (N, h·s, w·s, C/s²).

    'v1' and 'v2' differ by a transpose of the output grid; read it from the checkpoint.
    """
    n, h, w, c = x.shape
    x = x.reshape(n, h, int(w * scale), int(c / scale))  # (N, h, w·s, C/s)
    x = x.permute(0, 2, 1, 3).contiguous()  # (N, w·s, h, C/s)
    x = x.reshape(n, int(w * scale), int(h * scale), int(c / (scale * scale)))  # (N, w·s, h·s, C/s²)
    if ps_version == "v2":
        x = x.permute(0, 2, 1, 3).contiguous()  # (N, h·s, w·s, C/s²)
    return x


class MLPAdapter(nn.Sequential):
    """R1V's mlp1; ``forward`` maps (N,g,g,C) to (N, (g·s)², llm_hidden)."""

    def __init__(self, in_features: int, llm_hidden: int, downsample_ratio: float = 0.5,
                 ps_version: str = "v2", hidden: int | None = None) -> None:  # fmt: skip
        if ps_version not in ("v1", "v2"):
            raise ValueError(f"adapter 'mlp': ps_version must be 'v1' or 'v2', got '{ps_version}'")
        wide = int(in_features / downsample_ratio**2)
        hidden = hidden or llm_hidden
        super().__init__(nn.LayerNorm(wide), nn.Linear(wide, hidden), nn.GELU(), nn.Linear(hidden, llm_hidden))
        self.in_features, self.out_features = in_features, llm_hidden
        self.downsample_ratio, self.ps_version = downsample_ratio, ps_version

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = pixel_shuffle(features, self.downsample_ratio, self.ps_version)  # (N, g·s, g·s, 4C)
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, T, 4C)
        return super().forward(x)  # (N, T, llm_hidden)


def mlp(vision_hidden: int, llm_hidden: int, downsample_ratio: float = 0.5, ps_version: Literal["v1", "v2"] = "v2",
        hidden: int | None = None, in_features: int | None = None,
        pretrained: str | None = None) -> MLPAdapter:  # fmt: skip
    """R1V mlp1: pixel shuffle + LayerNorm → Linear → GELU → Linear.

    ``in_features`` pins the encoder width this adapter expects (default: the encoder's); the
    model builder refuses a mismatch before training.
    """
    adapter = MLPAdapter(in_features or vision_hidden, llm_hidden, downsample_ratio, ps_version, hidden)
    if pretrained:
        load_into(adapter, pretrained, "adapter 'mlp'")
    return adapter

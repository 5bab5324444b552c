"""The components themselves: plain PyTorch / Python, no r1v hooks here (imported lazily)."""

from __future__ import annotations

import torch
from torch import nn

from r1v.interfaces import RewardInput


class ExampleCNN(nn.Module):
    """Three stride-2 conv blocks (stride 8 in all): (N,3,S,S) -> (N, S/8, S/8, hidden_size)."""

    def __init__(self, image_size: int = 64, hidden_size: int = 32, width: int = 16) -> None:
        super().__init__()
        if image_size % 16:
            # stride 8, and the adapter's 0.5 pixel shuffle needs an even grid
            raise ValueError(f"vision 'example_cnn': image_size must be a multiple of 16, got {image_size}")
        self.image_size = int(image_size)
        self.grid_size = self.image_size // 8
        self.hidden_size = int(hidden_size)
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, hidden_size, 3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (N,3,S,S) -> (N,g,g,C)
        return self.norm(self.net(pixel_values).permute(0, 2, 3, 1))


class Brevity:
    """1.0 up to ``max_chars`` characters, then falling linearly to 0 at twice that length."""

    def __init__(self, max_chars: int = 200) -> None:
        if max_chars <= 0:
            raise ValueError(f"reward 'brevity': max_chars must be positive, got {max_chars}")
        self.max_chars = int(max_chars)

    def __call__(self, x: RewardInput) -> dict[str, float]:
        over = max(0, len(x.completion) - self.max_chars)
        return {"brevity": max(0.0, 1.0 - over / self.max_chars)}

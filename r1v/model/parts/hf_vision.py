"""SigLIP and CLIP vision towers through transformers (local folders only), plus tiny variants.

The tower's patch tokens become the (N, g, g, C) grid r1v's adapters expect: SigLIP has no CLS
token (last layer = ``last_hidden_state``, after its post-LayerNorm); CLIP's CLS token is dropped and,
as in LLaVA, ``select_layer=-2`` (the penultimate layer, before any final norm) is the usual choice.
Normalisation statistics come with the tower (``image_mean`` / ``image_std``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from r1v.runtime.weights import hf_from_folder

SIGLIP_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
TINY = {"image_size": 64, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4}  # fmt: skip


class HFVisionTower(nn.Module):
    def __init__(self, model: nn.Module, has_cls: bool, select_layer: int, mean_std: tuple) -> None:
        super().__init__()
        self.model, self.has_cls, self.select_layer = model, has_cls, select_layer
        cfg = model.config
        self.image_size, self.hidden_size = int(cfg.image_size), int(cfg.hidden_size)
        self.grid_size = self.image_size // int(cfg.patch_size)
        self.image_mean, self.image_std = mean_std

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (N,3,S,S) -> (N,g,g,C)
        if self.select_layer == -1:
            tokens = self.model(pixel_values=pixel_values).last_hidden_state  # (N, [CLS] + g*g, C)
        else:
            tokens = self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.select_layer]
        tokens = tokens[:, 1:] if self.has_cls else tokens  # (N, g*g, C)
        return tokens.reshape(tokens.shape[0], self.grid_size, self.grid_size, -1)


def _tower(kind: str, pretrained: str | None, select_layer: int, dims: dict[str, Any]) -> HFVisionTower:
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    cls, cfg_cls, mean_std = {
        "siglip": (SiglipVisionModel, SiglipVisionConfig, SIGLIP_MEAN_STD),
        "clip": (CLIPVisionModel, CLIPVisionConfig, CLIP_MEAN_STD),
    }[kind]
    if pretrained:
        if not Path(pretrained, "config.json").is_file():
            raise FileNotFoundError(f"vision '{kind}': {pretrained} is not a model folder (no config.json there)")
        # the vision config even from a full CLIP/SigLIP folder (text tower stored too; its tensors are skipped)
        config = cfg_cls.from_pretrained(pretrained, local_files_only=True)
        model = hf_from_folder(cls, pretrained, f"vision '{kind}'", config=config)
    else:
        model = cls(cfg_cls(**dims))
    return HFVisionTower(model, has_cls=kind == "clip", select_layer=select_layer, mean_std=mean_std)


def siglip(pretrained: str | None = None, select_layer: int = -1) -> HFVisionTower:
    """SigLIP vision tower from a local Hugging Face folder (e.g. siglip-so400m-patch14-384)."""
    if not pretrained:
        raise ValueError("vision 'siglip': set model.vision.pretrained=/path/to/siglip (or use siglip_tiny)")
    return _tower("siglip", pretrained, select_layer, {})


def clip(pretrained: str | None = None, select_layer: int = -2) -> HFVisionTower:
    """CLIP vision tower from a local Hugging Face folder (LLaVA's choice: penultimate layer)."""
    if not pretrained:
        raise ValueError("vision 'clip': set model.vision.pretrained=/path/to/clip (or use clip_tiny)")
    return _tower("clip", pretrained, select_layer, {})


def siglip_tiny(select_layer: int = -1) -> HFVisionTower:
    """Tiny random SigLIP tower (64 px, 8×8 patches, 64 wide) for tests and composition checks."""
    return _tower("siglip", None, select_layer, TINY)


def clip_tiny(select_layer: int = -2) -> HFVisionTower:
    """Tiny random CLIP tower (64 px, 8×8 patches, 64 wide) for tests and composition checks."""
    return _tower("clip", None, select_layer, TINY)

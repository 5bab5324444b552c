"""A composition on the meta device: shapes and parameter counts without memory or weights (a 38B model in
seconds), for ``python -m r1v inspect``, the memory planner and the random-weights guard of ``r1v.train``."""

from __future__ import annotations

from typing import Any

from torch import nn


def build_on_meta(cfg: dict[str, Any]) -> nn.Module:
    """The VLM with the stage's trainable set, on the meta device (shapes only)."""
    import torch

    from r1v.core.registry import get_registry
    from r1v.model.build import apply_freeze, build

    with torch.device("meta"):
        vlm, _ = build(cfg["model"], get_registry())
    apply_freeze(vlm, list(cfg["stage"].get("trainable") or ["all"]))
    return vlm


def count(module: nn.Module) -> tuple[int, int]:
    """(parameters, trainable parameters); tied parameters count once."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

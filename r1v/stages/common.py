"""Helpers for stages that run outside Lightning's loop (distill, iterative SFT): a model ready for
scoring and generation on the configured device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from r1v.weights import fp32_rotary


def stage_device(cfg: Mapping[str, Any]) -> torch.device:
    """The trainer's accelerator as a device: CUDA when asked for (gpu/cuda/auto) and present."""
    accel = str(cfg.get("trainer", {}).get("accelerator", "cpu"))
    return torch.device("cuda" if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")


def inference_model(cfg: Mapping[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The composition with ``checkpoint=`` loaded, in eval mode on the stage's device (bf16 when the
    trainer's precision says so)."""
    from r1v.model.build import build
    from r1v.registry import get_registry
    from r1v.stages.sft import load_trainable

    model, processor = build(cfg["model"], get_registry())
    if cfg.get("checkpoint"):
        load_trainable(model, cfg["checkpoint"])
    device = stage_device(cfg)
    dtype = torch.bfloat16 if device.type == "cuda" and "bf16" in str(cfg.get("trainer", {}).get("precision")) \
        else None  # fmt: skip
    model = model.to(device=device, dtype=dtype).eval()
    fp32_rotary(model)  # .to(bfloat16) rounded the rotary frequencies too
    return model, processor


def autocast(cfg: Mapping[str, Any], device: torch.device) -> Any:
    """bf16 autocast for generation and scoring outside Lightning when the trainer trains in bf16-mixed
    (the weights stay fp32 for the optimizer); a no-op on CPU."""
    import contextlib

    if device.type == "cuda" and "bf16" in str(cfg.get("trainer", {}).get("precision")):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

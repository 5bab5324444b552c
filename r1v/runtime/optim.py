"""The optimiser every stage trains with: AdamW, made safe for weights held in bf16 without DeepSpeed.

Backbones are built in bf16 (``backbone.dtype``, no float32 copy of a 32B model first). Under DeepSpeed's bf16
that is fine: its optimiser keeps fp32 master partitions and casts back after each step. Without DeepSpeed
(``trainer=gpu``, Lightning's ``bf16-mixed``) a trainable bf16 weight would be updated in place by
``torch.optim.AdamW`` in bf16, and every update smaller than half a bf16 step of the weight (8 bits of mantissa:
about 1e-4 for a weight of 0.02) is rounded away. At R1V's learning rates (1e-6 for GRPO, 1e-5 for SFT) that is
nearly every update: measured on CPU, 200 steps at lr 1e-5 move bf16 weights by 8% of what fp32 AdamW moves them
(``tests/unit/test_optim.py``). So a whole-model or backbone run under ``trainer=gpu`` trained almost nothing.

Here such a parameter set gets torch-optimi's AdamW (a maintained library) with Kahan-compensated updates: the
weight stays bf16 (what the forward, the rollout engine and checkpoints read), and a bf16 compensation buffer
carries the rounding error of each update into the next, which tracks fp32 AdamW to within bf16 rounding of the
weights. Memory per such parameter: 2 (weight) + 2 (gradient) + 4 (two bf16 moments) + 2 (compensation) = 10
bytes, against 16 for fp32 masters. Float32 parameters (the adapter, LoRA weights) are updated exactly as
``torch.optim.AdamW`` updates them (same formula, checked to 1e-8).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def uses_deepspeed(trainer: Any) -> bool:
    """True when ``trainer`` (a Lightning Trainer, or None) trains through a DeepSpeed strategy."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    return strategy is not None and "deepspeed" in type(strategy).__name__.lower()


def adamw(params: Iterable[torch.nn.Parameter], lr: float, betas: Sequence[float], weight_decay: float,
          deepspeed: bool, eps: float = 1e-8) -> torch.optim.Optimizer:  # fmt: skip
    """AdamW over ``params`` (decoupled weight decay scaled by the learning rate, as in PyTorch).

    ``deepspeed``: DeepSpeed wraps the optimiser and hands it fp32 master partitions, so plain
    ``torch.optim.AdamW`` is right. Otherwise, when any parameter is bf16/fp16, torch-optimi's AdamW with Kahan
    summation (see the module docstring)."""
    params = list(params)
    b1, b2 = (float(b) for b in betas)
    low = [p for p in params if p.dtype in LOW_PRECISION]
    if deepspeed or not low:
        return torch.optim.AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
    import optimi  # only here: DeepSpeed and fp32 runs never need it

    log.info("optimizer: %d of %d trainable tensors (%.2fB parameters) are %s without DeepSpeed: AdamW with "
             "Kahan-compensated updates (torch-optimi), so updates below bf16 resolution are kept", len(low),
             len(params), sum(p.numel() for p in low) / 1e9, low[0].dtype)  # fmt: skip
    return optimi.AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, kahan_sum=True)

"""Padding-free packed attention for Hugging Face backbones (``stage.packing=true``).

The samples of a micro-batch are concatenated into one row of ``T = Σ nᵢ`` tokens — no padding, no
mask tensor — and every attention layer runs FlashAttention's variable-length kernel over the
cumulative lengths ``cu_seq_lens`` (``[0, n₀, n₀+n₁, …]``), so a sample never attends to another one and
no FLOP is spent on padding or on the cross-sample blocks a block-diagonal mask would still compute.

It is registered with transformers' ``AttentionInterface`` as ``r1v_varlen``; the stage switches an
``sdpa`` backbone to it when packing is on. Without ``cu_seq_lens_q`` in the forward's keyword arguments
(unpacked batches, validation, generation) it *is* SDPA, masks included, so one model serves both.
On CUDA in bf16/fp16 it calls ATen's flash kernel (``aten._flash_attention_forward``, differentiable,
GQA-native); elsewhere (CPU tests, fp32) a per-sample causal SDPA loop gives the same numbers.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F

NAME = "r1v_varlen"
_registered = False


def register() -> None:
    """Make ``r1v_varlen`` a valid ``config._attn_implementation`` (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # unpacked batches get SDPA's masks
    _registered = True


def packed_kwargs(lengths: list[int]) -> dict[str, Any]:
    """Forward keyword arguments of one packed row holding samples of these lengths (transformers'
    ``FlashAttentionKwargs`` names, so they flow from the model's forward to every attention layer)."""
    cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)  # (N+1,)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """transformers' attention signature: q (B, Hq, L, D), k/v (B, Hkv, L, D) -> ((B, L, Hq, D), None)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)  # fmt: skip
    if query.shape[0] != 1:
        raise ValueError(f"packed attention expects one row of concatenated samples, got a batch of {query.shape[0]}")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (T, H, D)
    longest = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, 0.0, True, False,
                                                      scale=scaling)[0]  # fmt: skip  # (T, Hq, D)
    else:
        bounds = cu.tolist()
        parts = []
        for a, b in itertools.pairwise(bounds):
            seg = [x[a:b].transpose(0, 1) for x in (q, k, v)]  # (H, n, D)
            parts.append(F.scaled_dot_product_attention(*seg, is_causal=True, scale=scaling, enable_gqa=True))
        out = torch.cat([o.transpose(0, 1) for o in parts])  # (T, Hq, D)
    return out[None], None  # (1, T, Hq, D)

"""Padding-free log-probs for GRPO's old-policy, reference and update passes (``stage.packing=true``).

A micro-batch of (prompt, completion) pairs becomes one row ``[p₀ c₀ | p₁ c₁ | …]`` of ``N = Σ (pᵢ + cᵢ)`` tokens,
positions restarting at each sequence and attention kept within it by the variable-length kernel
(:mod:`r1v.model.varlen`), instead of ``B`` rows padded to the longest prompt plus the longest completion. GRPO's
completions vary from tens to thousands of tokens within one batch, so the padded rows can be mostly padding.
The LM head then runs on the ``M = Σ cᵢ`` completion positions only, and the log-probs are scattered back to the
``[B, T]`` layout (zeros past each completion) that the policy losses and the completion mask use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from r1v.model import varlen
from r1v.model.varlen import packed_kwargs
from r1v.rl.grpo import chunked_logprobs


@dataclass
class PackedRows:
    """One packed row of prompt + completion sequences, and where each completion token's log-prob goes."""

    input_ids: torch.Tensor  # (1, N)
    position_ids: torch.Tensor  # (1, N): 0.. within each sequence
    lengths: list[int]  # pᵢ + cᵢ per sequence
    predictors: torch.Tensor  # (M,) row positions whose hidden state predicts a completion token
    targets: torch.Tensor  # (M,) those tokens
    rows: torch.Tensor  # (M,) sequence of each, in [B, T]
    cols: torch.Tensor  # (M,) its index within the completion

    def to(self, device: torch.device | str) -> PackedRows:
        move = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return PackedRows(**move)


def packed_rows(prompts: list[list[int]], completions: list[list[int]]) -> PackedRows:
    """Prompt and completion ids per sequence -> :class:`PackedRows` (CPU tensors)."""
    ids, pos, lengths, predictors, targets, rows, cols = [], [], [], [], [], [], []
    offset = 0
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        if not p:
            raise ValueError(f"packed_rows: sequence {b} has an empty prompt (nothing predicts its first token)")
        n = len(p) + len(c)
        ids += [*p, *c]
        pos += range(n)
        lengths.append(n)
        start = offset + len(p)  # row position of the completion's first token
        predictors += range(start - 1, start - 1 + len(c))  # position t predicts token t + 1
        targets += c
        rows += [b] * len(c)
        cols += range(len(c))
        offset += n
    long = torch.long
    return PackedRows(torch.tensor([ids], dtype=long), torch.tensor([pos], dtype=long), lengths,
                      torch.tensor(predictors, dtype=long), torch.tensor(targets, dtype=long),
                      torch.tensor(rows, dtype=long), torch.tensor(cols, dtype=long))  # fmt: skip


def packed_token_logprobs(model: Any, packed: PackedRows, pixel_values: torch.Tensor | None, n_rows: int,
                          n_completion: int, chunk: int = 1024, with_entropy: bool = False,
                          **media: Any) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Log-probs ``[B, T]`` (and entropies) of every completion token, as :func:`r1v.rl.grpo.token_logprobs`
    computes them on padded rows; zero past each completion (where the completion mask is 0)."""
    attn = getattr(getattr(model.backbone, "config", None), "_attn_implementation", None)
    if attn != varlen.NAME:  # any other attention would let the packed sequences see each other
        raise ValueError(f"stage.packing=true needs the backbone's attention to be '{varlen.NAME}' (an SDPA backbone "
                         f"is switched to it when the stage is set up), but it is '{attn}'; use "
                         "backbone.attn_implementation=sdpa or stage.packing=false")  # fmt: skip
    kw = {k: v.to(packed.input_ids.device) if isinstance(v, torch.Tensor) else v
          for k, v in packed_kwargs(packed.lengths).items()}  # fmt: skip
    hidden = model.hidden_states(packed.input_ids, None, pixel_values, position_ids=packed.position_ids, **kw,
                                 **media)  # (1, N, D)  # fmt: skip
    h = hidden[:, packed.predictors]  # (1, M, D)
    lp, ent = chunked_logprobs(model.backbone.get_output_embeddings(), h, packed.targets[None], chunk, with_entropy)
    shape = (n_rows, n_completion)
    out = lp.new_zeros(shape).index_put((packed.rows, packed.cols), lp[0])  # (B, T)
    if ent is None:
        return out, None
    return out, ent.new_zeros(shape).index_put((packed.rows, packed.cols), ent[0])

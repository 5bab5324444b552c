"""Batched next-token choice on the device, one knob value per row, with no host synchronisation.

The order and rules are transformers' (so the ``hf`` engine is the reference): repetition penalty
(CTRL: a seen token's positive logit divided by P, a negative one multiplied) → temperature → top-p
(keep the most probable tokens until their mass reaches p; the token that crosses p is kept) → a
draw. The draw is an exponential race — ``argmax(p_i / E_i)`` with ``E_i ~ Exp(1)`` picks ``i`` with
probability ``p_i`` — instead of ``torch.multinomial``, which synchronises with the host and so
cannot live in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Knobs:
    """Per-row sampling knobs, (B,) float32 tensors on the device (None: off for every row).

    ``use_top_p`` and ``use_penalty`` are decided once per batch on the host, so a captured step never
    carries the sort or the penalty pass when no row needs them.
    """

    temperature: torch.Tensor
    top_p: torch.Tensor | None
    penalty: torch.Tensor | None

    @classmethod
    def build(cls, temperature: list[float], top_p: list[float], penalty: list[float],
              device: torch.device) -> Knobs:  # fmt: skip
        t = torch.tensor(temperature, dtype=torch.float32, device=device)
        p = torch.tensor(top_p, dtype=torch.float32, device=device) if any(x < 1.0 for x in top_p) else None
        r = torch.tensor(penalty, dtype=torch.float32, device=device) if any(x != 1.0 for x in penalty) else None
        return cls(t, p, r)


def penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """(B, V) logits, (B, V) bool seen tokens, (B,) factors -> penalised logits (CTRL rule, row-wise)."""
    p = penalty[:, None]
    return torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)


def top_p_filter(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask to -inf every token outside the row's nucleus (transformers' TopPLogitsWarper rule).

    A token is dropped when the probability mass strictly above it already reaches p; the most
    probable token is always kept.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(-1)
    above = probs.cumsum(-1) - probs  # mass of the tokens ranked before each one
    drop = above >= top_p[:, None]
    drop[:, 0] = False
    return logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))


def choose(logits: torch.Tensor, knobs: Knobs, greedy: bool, seen: torch.Tensor | None) -> torch.Tensor:
    """(B, V) float32 logits -> (B,) next tokens."""
    if knobs.penalty is not None and seen is not None:
        logits = penalise(logits, seen, knobs.penalty)
    if greedy:
        return logits.argmax(-1)
    logits = logits / knobs.temperature[:, None]
    if knobs.top_p is not None:
        logits = top_p_filter(logits, knobs.top_p)
    probs = logits.softmax(-1)
    race = torch.empty_like(probs).exponential_()
    return (probs / race).argmax(-1)

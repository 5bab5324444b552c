"""A process (step-level) reward model's parts: where a completion's steps end among its tokens, the per-step
targets from a generator's step labels, and the loss — binary cross-entropy of the scalar head at each step's
end token (sound 1, flawed 0), as in process-supervised reward models (Lightman et al., *Let's Verify Step by
Step*), here with a label per step from the data generator instead of human raters.

Rows are laid out as :func:`r1v.rl.grpo.completion_rows` lays them out: the completion's token ``j`` sits in
column ``j`` of the ``[B, T]`` completion block. Steps are the chain's sentences or clauses (:mod:`r1v.data.steps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from r1v.data.steps import chain_part, step_spans


def step_ends(tokenizer: Any, completion: str, unit: str = "sentence") -> list[tuple[int, int]]:
    """``(character end, token index)`` of each step (``unit``: sentence | clause), in chain order: the token
    (into ``tokenizer(completion + eos, add_special_tokens=False)``, the ids the pair collator and the scorer
    build) holding the step's last character."""
    enc = tokenizer(completion + tokenizer.eos_token, add_special_tokens=False, return_offsets_mapping=True)
    offsets, out, j = enc["offset_mapping"], [], 0
    for _, end in step_spans(chain_part(completion), unit):
        while j < len(offsets) and not offsets[j][0] <= end - 1 < offsets[j][1]:
            j += 1
        if j == len(offsets):
            break
        if not out or out[-1][1] != j:
            out.append((end, j))
    return out


def step_batch(tokenizer: Any, completions: Sequence[str], width: int,
               labels: Sequence[Sequence[Sequence[int]] | None] | None = None, unit: str = "sentence",
               ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(step_mask, targets)``, both ``[B, width]``: the mask is 1 at each step's end token (a completion with no
    step: at its last token, so every row has a score); targets at step ends are 1 (sound) / 0 (flawed) from the
    label spans ``[start, end, sound]`` of ``labels[b]`` that the step overlaps (flawed if any of them is: the
    labels may be finer than the unit), −1 elsewhere (no loss)."""
    mask = torch.zeros((len(completions), width), dtype=torch.long)
    targets = torch.full((len(completions), width), -1.0)
    for b, text in enumerate(completions):
        ends = [(e, j) for e, j in step_ends(tokenizer, text, unit) if j < width]
        if not ends:
            n = len(tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
            mask[b, min(n, width) - 1] = 1
            continue
        spans, previous = (labels[b] if labels is not None else None) or (), 0
        for e, j in ends:
            mask[b, j] = 1
            hits = [int(ok) for s, t, ok in spans if s < e and t > previous]  # the label spans this step covers
            if hits:
                targets[b, j] = float(min(hits))
            previous = e
    return mask, targets


def step_softmin(token_scores: torch.Tensor, step_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[B]`` chain scores: −τ·log Σ exp(−s_j/τ) over each row's step-end tokens (τ → 0: the worst step)."""
    s = token_scores.masked_fill(step_mask.to(token_scores.device) == 0, float("inf"))
    return -temperature * torch.logsumexp(-s / temperature, dim=1)


def process_loss(token_scores: torch.Tensor, targets: torch.Tensor, flawed_weight: float = 1.0,
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Binary cross-entropy with logits of the head at the labelled step ends (``targets`` ≥ 0), their mean
    weighted ``flawed_weight`` on flawed steps and 1 on sound ones (flawed steps can be rare: one wrong object
    among some 22 clauses of a pair); with the step accuracy (logit > 0 ⇔ sound) and the share of flawed steps
    caught."""
    targets = targets.to(token_scores.device)
    keep = targets >= 0
    s, y = token_scores[keep], targets[keep]
    if not len(y):
        return token_scores.sum() * 0.0, {}
    w = torch.where(y == 0, torch.full_like(y, flawed_weight), torch.ones_like(y))
    loss = (F.binary_cross_entropy_with_logits(s, y, reduction="none") * w).sum() / w.sum()
    hit = ((s > 0).float() == y).float()
    metrics = {"step_accuracy": hit.mean().detach()}
    if (y == 0).any():
        metrics["flawed_step_recall"] = hit[y == 0].mean().detach()
    return loss, metrics

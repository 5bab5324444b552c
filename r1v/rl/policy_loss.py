"""Policy losses for GRPO-family training, one formula per registered name.

Every loss is ``fn(logp, old_logp, ref_logp, advantages, mask, **knobs) -> (loss, metrics)``:
``logp``/``old_logp``/``ref_logp`` are ``[B, T]`` per-token log-probabilities of the sampled tokens
under the policy being trained, the policy that sampled them, and the frozen reference (None when
β = 0); ``advantages`` is ``[B]`` (one value per completion, the same for all its tokens); ``mask`` is
``[B, T]``, 1 on completion tokens.

``grpo`` (DeepSeekMath / R1) per token:  ρ = exp(logp − old_logp),
``l = −min(ρ·Â, clip(ρ, 1−ε_low, 1+ε_high)·Â) + β·k3``, ``k3 = exp(ref − logp) − (ref − logp) − 1``,
aggregated by ``loss_agg``:

* ``seq_mean``  — mean over each completion's tokens, then over completions (the GRPO paper);
* ``token_mean`` — sum over all tokens / number of tokens in the batch (DAPO);
* ``constant``  — sum over all tokens / (B · ``max_len``) (Dr. GRPO's constant normaliser).

DAPO's clip-higher is ``eps_high > eps_low``; Dr. GRPO also drops the std scaling of advantages
(``stage.scale_rewards=false``, done where advantages are computed).
"""

from __future__ import annotations

import functools
import typing
from typing import Any, Literal

import torch

Aggregation = Literal["seq_mean", "token_mean", "constant"]  # the annotation composition checks knobs against
AGGREGATIONS: tuple[str, ...] = typing.get_args(Aggregation)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, max_len: int | None = None) -> torch.Tensor:
    """Reduce ``[B, T]`` per-token values over the completion tokens (see the module docstring)."""
    m = mask.to(per_token.dtype)
    if how == "seq_mean":
        return ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).mean()
    if how == "token_mean":
        return (per_token * m).sum() / m.sum().clamp(min=1)
    if how == "constant":
        return (per_token * m).sum() / (per_token.shape[0] * (max_len or per_token.shape[1]))
    raise ValueError(f"loss_agg '{how}' is not allowed (use {', '.join(AGGREGATIONS)})")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, *, eps_low: float = 0.2, eps_high: float = 0.2, beta: float = 0.0,
              loss_agg: str = "seq_mean",
              max_len: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
    """Clipped surrogate with optional k3 KL to the reference (the module docstring has the formula)."""
    m = mask.bool()
    ratio = torch.exp(logp - old_logp)  # [B, T]
    adv = advantages[:, None].to(logp.dtype)  # [B, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    metrics: dict[str, Any] = {}
    if beta and ref_logp is not None:
        delta = ref_logp - logp
        k3 = torch.exp(delta) - delta - 1  # ≥ 0, unbiased estimator of KL(π‖π_ref)
        per_token = per_token + beta * k3
        metrics["kl"] = aggregate(k3.detach(), mask, "token_mean")
    loss = aggregate(per_token, mask, loss_agg, max_len)
    with torch.no_grad():
        is_clipped = (clipped < unclipped) & m  # the clip bound is the active one
        n = m.sum().clamp(min=1)
        metrics["clip_fraction"] = is_clipped.sum() / n
        metrics["ratio_mean"] = (ratio * m).sum() / n
    return loss, metrics


def grpo(eps_low: float = 0.2, eps_high: float = 0.2, beta: float = 0.0,
         loss_agg: Aggregation = "seq_mean",
         max_len: int | None = None) -> Any:  # fmt: skip
    """GRPO's clipped objective (+ β·k3 KL); DAPO clip-higher via eps_high, DAPO/Dr.GRPO aggregation via loss_agg."""
    if loss_agg not in AGGREGATIONS:
        raise ValueError(f"policy_loss grpo: loss_agg '{loss_agg}' is not allowed (use {', '.join(AGGREGATIONS)})")
    if not (0 <= eps_low < 1 and eps_high >= 0):
        raise ValueError(f"policy_loss grpo: need 0 ≤ eps_low < 1 and eps_high ≥ 0, got {eps_low}, {eps_high}")
    if loss_agg == "constant" and not max_len:
        raise ValueError("policy_loss grpo: loss_agg=constant (Dr. GRPO) needs max_len, the completion budget")
    fn = functools.partial(grpo_loss, eps_low=eps_low, eps_high=eps_high, beta=beta, loss_agg=loss_agg,
                           max_len=max_len)  # fmt: skip
    fn.beta = beta  # type: ignore[attr-defined]  # the stage skips the reference model when 0
    return fn

"""Preference losses: MPO (R1V2, InternVL) = w1·DPO + w2·BCO + w3·length-normalised NLL, and the
Bradley-Terry loss of a scalar reward model.

Inputs are per-sequence summed log-probs ``[B]`` of the chosen (``pc``) and rejected (``pr``) completions
under the policy, the same under the frozen reference (``rc``, ``rr``), and the chosen lengths ``[B]``.
The implicit reward of a completion is β·(log π − log π_ref).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def dpo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> torch.Tensor:
    """``[B]`` −log σ(β·((pc − rc) − (pr − rr))) (Rafailov et al., sigmoid DPO)."""
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def bco_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float,
             delta: float | torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``[B]`` −log σ(β(pc − rc) − δ) − log σ(−(β(pr − rr) − δ)) (Jung et al., BCO; δ the running mean
    of past rewards, :class:`RunningMean`)."""
    return -F.logsigmoid(beta * (pc - rc) - delta) - F.logsigmoid(-(beta * (pr - rr) - delta))


def nll_loss(pc: torch.Tensor, length_c: torch.Tensor) -> torch.Tensor:
    """``[B]`` length-normalised NLL of the chosen completion: −pc / |chosen|."""
    return -pc / length_c.clamp(min=1)


class RunningMean:
    """BCO's δ: the mean of every reward seen so far (both sides of every pair), as TRL's RunningMoments;
    updated with the current batch before it is used. Checkpointed through :meth:`state_dict`."""

    def __init__(self) -> None:
        self.mean, self.count = 0.0, 0

    def update(self, values: torch.Tensor) -> float:
        n = values.numel()
        if n:
            total = self.count + n
            self.mean += (float(values.detach().float().mean()) - self.mean) * n / total
            self.count = total
        return self.mean

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.count = float(state["mean"]), int(state["count"])


def mpo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, length_c: torch.Tensor,
             beta: float, weights: Sequence[float], delta: RunningMean | None = None,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Mixed preference optimisation: w1·DPO + w2·BCO + w3·NLL, batch means. ``weights`` = (w1, w2, w3);
    InternVL's public MPO uses (0.8, 0.2, 1.0). With ``delta`` None, BCO's δ is 0 (no running state).
    Returns the loss and detached metrics: each part, implicit rewards, their margin and accuracy, δ."""
    w_dpo, w_bco, w_nll = (float(w) for w in weights)
    chosen_r, rejected_r = beta * (pc - rc).detach(), beta * (pr - rr).detach()  # [B] implicit rewards
    d = delta.update(torch.cat([chosen_r, rejected_r])) if delta is not None else 0.0
    parts = {"dpo": dpo_loss(pc, pr, rc, rr, beta).mean(), "bco": bco_loss(pc, pr, rc, rr, beta, d).mean(),
             "nll": nll_loss(pc, length_c).mean()}  # fmt: skip
    loss = w_dpo * parts["dpo"] + w_bco * parts["bco"] + w_nll * parts["nll"]
    metrics = {f"loss_{k}": v.detach() for k, v in parts.items()}
    metrics.update({"reward_chosen": chosen_r.mean(), "reward_rejected": rejected_r.mean(),
                    "margin": (chosen_r - rejected_r).mean(), "pair_accuracy": (chosen_r > rejected_r).float().mean(),
                    "delta": torch.tensor(float(d))})  # fmt: skip
    return loss, metrics


def bradley_terry_loss(score_c: torch.Tensor, score_r: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reward-model loss −log σ(s_chosen − s_rejected), batch mean; with its ranking accuracy and margin."""
    diff = score_c - score_r  # [B]
    loss = -F.logsigmoid(diff).mean()
    return loss, {"margin": diff.detach().mean(), "pair_accuracy": (diff > 0).float().mean().detach()}

"""Policy losses: GRPO and its variants (maths: r1v.rl.policy_loss)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.rl.policy_loss import grpo


@hookimpl
def register_policy_losses(register):
    register("grpo", grpo)

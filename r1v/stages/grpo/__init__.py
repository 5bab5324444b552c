"""``stage=grpo``: the LightningModule (:mod:`.stage`) and the phases of its step (:mod:`.phases`)."""

from r1v.stages.grpo.stage import GRPOStage, _Indexed, loss_shares, step_seed

__all__ = ["GRPOStage", "_Indexed", "loss_shares", "step_seed"]

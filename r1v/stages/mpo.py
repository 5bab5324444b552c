"""``stage=mpo``: mixed preference optimisation (R1V2's first stage after re-assembly; InternVL's MPO).

Each batch holds ``stage.batch_size`` pairs (prompt with its images, chosen, rejected; ``data=pairs`` or
``data=synthetic_pairs``). Chosen and rejected rows go through the policy together, and through the
frozen reference — the starting policy: for adapter-only training the same trunk with a copy of the
initial adapter swapped in (:class:`r1v.rl.grpo.AdapterReference`; with LoRA also LoRA off) — without
gradients. The loss is ``w1·DPO + w2·BCO + w3·NLL(chosen)/|chosen|`` (:func:`r1v.rl.preference.mpo_loss`);
BCO's δ is a running mean checkpointed with the run. Validation logs the same pair metrics on the val pairs, and greedy
accuracy where the pairs carry an ``answer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from r1v.core.config import ConfigError
from r1v.core.interfaces import Sample
from r1v.data.audio import audio_inputs
from r1v.data.collate import PairCollator, check_pairs
from r1v.rl.grpo import Reference, reference_for, token_logprobs
from r1v.rl.preference import RunningMean, mpo_loss
from r1v.stages.base import LightningStage


class MPOStage(LightningStage):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        st = self.stage
        self.beta = float(st["beta"])
        self.weights = tuple(float(st["weights"][k]) for k in ("dpo", "bco", "nll"))
        if min(self.weights) < 0 or not any(self.weights):
            raise ConfigError(f"stage.weights={dict(st['weights'])}: weights must be ≥ 0 and not all 0")
        self.delta = RunningMean()
        self.reference: Reference | None = None

    def configure_model(self) -> None:
        super().configure_model()
        if self.reference is None and any(self.weights[:2]):  # DPO/BCO compare with the starting policy
            self.reference = reference_for(self.model, self.trainable, self.lora_fresh)

    # -- data --------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return self.resumable_loader(self.datasets["train"], PairCollator(self.processor, self.data_limits()))

    def attach_data(self, train: Any, val: Any) -> None:
        """Pair data only (checked before the model is built)."""
        check_pairs(self.cfg, {"train": train, "val": val})
        super().attach_data(train, val)

    # -- steps -------------------------------------------------------------------------------------
    def _pair_logps(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Summed log-probs ``[B]`` of chosen and rejected under the policy and the reference, chosen lengths."""
        dev = self.device
        ids, attn, mask = (batch[k].to(dev) for k in ("input_ids", "attention_mask", "completion_mask"))
        px = batch["pixel_values"].to(dev) if batch["pixel_values"] is not None else None
        t = mask.shape[1]
        chunk = int(self.stage["logp_chunk"])
        audio = {k: v.to(dev) for k, v in audio_inputs(batch).items()}  # {} without audio
        logp, _ = token_logprobs(self.model, ids, attn, px, t, chunk, **audio)  # [2B, T]
        seq = (logp * mask).sum(1)  # [2B]
        ref = torch.zeros_like(seq)
        if self.reference is not None:
            with torch.no_grad(), self.reference.active():
                ref = (token_logprobs(self.model, ids, attn, px, t, chunk, **audio)[0] * mask).sum(1)
        b = len(batch["samples"])
        return seq[:b], seq[b:], ref[:b], ref[b:], mask[:b].sum(1).float()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.begin_batch(batch)
        if batch.get("empty"):
            return self.empty_loss()
        pc, pr, rc, rr, length_c = self._pair_logps(batch)
        loss, metrics = mpo_loss(pc, pr, rc, rr, length_c, self.beta, self.weights, self.delta)
        n = len(batch["samples"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=n)
        self.log("train/skipped_samples", float(self.position.skipped), batch_size=1)
        return loss

    def validation_step(self, samples: list[Sample], batch_idx: int) -> None:
        batch = PairCollator(self.processor)(samples)
        if batch.get("empty"):
            return
        pc, pr, rc, rr, length_c = self._pair_logps(batch)
        loss, metrics = mpo_loss(pc, pr, rc, rr, length_c, self.beta, self.weights, None)
        n = len(batch["samples"])
        self.log("val/mpo_loss", loss, batch_size=n)
        self.log_dict({f"val/{k}": metrics[k] for k in ("margin", "pair_accuracy")}, batch_size=n)
        with_answer = [s for s in samples if s.answer]
        if with_answer:  # val/loss on the direct answer and greedy val/accuracy, as every stage
            self.validate_answers(with_answer, batch_idx)

    # -- checkpoints: δ ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["r1v"]["mpo"] = {"delta": self.delta.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("r1v", {}).get("mpo")
        if state:
            self.delta.load_state_dict(state["delta"])

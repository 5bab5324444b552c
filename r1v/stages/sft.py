"""Supervised stages (``align``, ``sft``): next-token loss on the completion only.

``align`` is R1V's adapter initialisation with a substitute LM (default target: the direct answer,
trainable: the adapter); ``sft`` trains on R1-format reasoning chains. Both share this module; the
stage config chooses target, trainable parts and optimisation. Model life, checkpoints, resume and
validation answers come from :class:`~r1v.stages.base.LightningStage`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from r1v.core.interfaces import Sample
from r1v.data.audio import audio_inputs
from r1v.data.collate import Collator
from r1v.rl.grpo import chunked_logprobs
from r1v.runtime.faults import poisoned
from r1v.stages.base import LightningStage


class SFTStage(LightningStage):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        self._window_total = 1.0  # loss tokens of the current accumulation window, all ranks (token_weight)

    # -- data ----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return self.resumable_loader(self.datasets["train"], self.train_collator(), window=self.accumulate)

    @property
    def accumulate(self) -> int:
        """Batches per optimizer step (``stage.accumulate_grad_batches``)."""
        return int(self.stage["accumulate_grad_batches"])

    def train_collator(self) -> Collator:
        """Padded batches, or packed rows with ``stage.packing=true`` (no cross-sample attention)."""
        pack = int(self.stage["pack_max_tokens"]) if self.stage["packing"] else None
        attn = getattr(self.model.backbone.config, "_attn_implementation", "sdpa") or "sdpa"
        limits = self.data_limits()
        return Collator(self.processor, self.stage["target"], pack_max_tokens=pack, attn=attn, limits=limits,
                        teacher=self.text_teacher > 0)  # fmt: skip

    @property
    def text_teacher(self) -> float:
        """``stage.text_teacher``: weight of the text-teacher term in the loss (0: off; :meth:`teacher_loss`)."""
        return float(self.stage.get("text_teacher") or 0.0)

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.begin_batch(batch)
        weight = self.token_weight(batch)  # every rank, every batch: it may all-reduce
        if batch.get("empty"):  # every sample skipped, or only a lock-step pad
            return self.empty_loss()
        loss = self.loss(batch)
        self.throughput.count(self.model, self.device, batch)
        if poisoned("nan_loss", self.global_step):
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            self.nonfinite("loss")
            return None  # Lightning skips backward and the optimizer step
        n_tokens = int((batch["labels"] != -100).sum())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        self.log("train/answer_tokens", float(n_tokens), reduce_fx="sum", batch_size=len(batch["ids"]))
        self.log("train/skipped_samples", float(self.position.skipped), batch_size=1)
        self.log("train/nonfinite_skipped", float(self.guard.total), batch_size=1)  # cumulative, every step
        if self.text_teacher:  # rows trained on the answer alone: no text view, or one that cannot be encoded
            self.log("train/text_teacher_missing", float(batch.get("teacher_missing", 0)), reduce_fx="sum",
                     batch_size=len(batch["ids"]))  # fmt: skip
        return loss if weight is None else loss * weight

    def token_weight(self, batch: dict[str, Any]) -> float | None:
        """Scale of this batch's mean loss so that one optimizer step averages over every loss token of its
        window on every rank: ``n / T · accumulate · world``, where ``n`` is this batch's loss tokens and ``T``
        the window's total over all ranks (all-reduced when the window opens). Lightning divides by
        ``accumulate`` and DDP/DeepSpeed average over ranks, which cancels the last two factors. None when one
        batch on one device makes a step (the mean is already that average)."""
        world = self.trainer.world_size if self._trainer else 1
        if self.accumulate == 1 and world == 1:
            return None
        n = int(batch.get("loss_tokens", 0))  # 0 for an empty batch, which still joins the all-reduce
        if batch.get("window_first", True):
            local = float(batch.get("window_tokens", n))
            total = self.trainer.strategy.reduce(torch.tensor(local, device=self.device), reduce_op="sum")
            self._window_total = max(float(total), 1.0)
        return n / self._window_total * self.accumulate * world

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens (labels ≠ -100). ``stage.loss_chunk_tokens=N`` runs the LM
        head on N answer tokens at a time, each chunk recomputed in the backward, so the ``[tokens, vocab]``
        fp32 logits (16k tokens × 152k × 4 B ≈ 10 GB, twice with their gradient) never exist (default 4,096: a
        padded batch of 4 × 8k tokens ran out of memory on an H200 in transformers' loss); 0: transformers' loss
        over the full logits. The two are equal (tests/unit/test_model.py)."""
        kw = {"position_ids": batch.get("position_ids"), **batch.get("attn_kwargs", {}), **audio_inputs(batch)}
        chunk = int(self.stage["loss_chunk_tokens"])
        if "teacher" in batch and self.text_teacher:  # the collator adds twins only when the teacher is on
            return self.teacher_loss(batch, kw, chunk)
        if not chunk:
            return self.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                              **kw).loss  # fmt: skip
        hidden = self.model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], **kw)
        return answer_nll(self.model.backbone.get_output_embeddings(), hidden, batch["labels"], chunk)

    def teacher_loss(self, batch: dict[str, Any], kw: dict[str, Any], chunk: int) -> torch.Tensor:
        """The answer's cross-entropy + ``stage.text_teacher`` × how far the LM's states on the media are from its
        states on the media's text (DiVA-style distillation from the substitute reading the text; Held et al.,
        2024). The same frozen LM reads each sample's text twin without gradients; at every position where the
        rows line up (:meth:`r1v.data.collate.Collator.text_twins`) and in every layer, the squared distance
        between the two hidden states, relative to the twin's squared norm, averaged over the layers. The answer
        alone is a weak signal for an adapter that must make each media token read as the LM's own token (the tiny
        omni clips after align: 28–42% held-out on the beeps, 98% with this term; benchmarks/README.md). With a
        trainable backbone the twin is read by the current weights: a moving teacher."""
        states = self.model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                          all_layers=True, **kw)  # fmt: skip  # (layers + 1) × (B, L, D)
        nll = answer_nll(self.model.backbone.get_output_embeddings(), states[-1], batch["labels"], chunk)
        twin = batch["teacher"]
        with torch.no_grad():
            ref = self.model.hidden_states(twin["input_ids"], twin["attention_mask"], all_layers=True)
        match = teacher_distance(states, ref, batch["teacher_src"], batch["teacher_dst"])
        self.log("train/text_teacher", match.detach(), batch_size=len(batch["ids"]))
        return nll + self.text_teacher * match

    def validation_step(self, samples: list[Sample], batch_idx: int) -> None:
        self.validate_answers(samples, batch_idx)


def answer_nll(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, L, D) final hidden states and (B, L) labels -> mean negative log-likelihood of the answer tokens, the LM
    ``head`` run ``chunk`` tokens at a time (0: all at once)."""
    labels = labels[:, 1:]  # (B, L-1): position t predicts token t+1
    keep = labels != -100
    h, targets = hidden[:, :-1][keep][None], labels[keep][None]  # (1, N, D), (1, N): answer tokens only
    logp, _ = chunked_logprobs(head, h, targets, chunk or h.shape[1])
    return -logp.mean()


def teacher_distance(states: Sequence[torch.Tensor], ref: Sequence[torch.Tensor], src: torch.Tensor,
                     dst: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Mean over the layers (``states[1:]``: the embeddings are not compared) of Σ‖student − twin‖² / Σ‖twin‖² at
    the aligned positions: ``src`` / ``dst`` (N, 2) row and position pairs into the student's and the twin's
    (B, L, D) states. 0 when the media read exactly as their text."""
    (rs, ps), (rt, pt) = src.T, dst.T
    terms = [(s[rs, ps].float() - r[rt, pt].float()).pow(2).sum() / r[rt, pt].float().pow(2).sum().clamp_min(1e-12)
             for s, r in zip(states[1:], ref[1:], strict=True)]  # fmt: skip
    return torch.stack(terms).mean()

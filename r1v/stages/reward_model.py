"""``stage=reward_model``: a scalar-head reward model on preference pairs (Bradley-Terry), in the spirit of
Skywork-VL Reward: the composition (vision encoder frozen, adapter + backbone trainable by default)
plus a linear head on the last token's final hidden state (``stage.head.pool=last``, the default), or on every
completion token, pooled by a soft minimum (``stage.head.pool=softmin``: −τ·log Σ exp(−s_t/τ) over the
completion's tokens, τ = ``stage.head.temperature``). The soft minimum lets one bad step sink a chain without the
last token's state having to carry it: a chain that reaches the right answer by a wrong step is judged where the
step is. ``stage.head.pool=steps`` pools the same way over the chain's step ends only (one per sentence, or per
clause with ``stage.head.step_unit=clause``: :mod:`r1v.data.steps`).

``stage.objective`` picks the training signal: ``pairwise`` (the default) is Bradley-Terry on the pooled chain
scores; ``process`` trains the head per step — binary cross-entropy at each step's end token against the step
labels the pair data carries (``meta["chosen_steps"]``/``["rejected_steps"]``, as ``data=synthetic_hard_pairs``
writes them) — and needs ``stage.head.pool=steps``, so a chain scores as its soft-worst step
(:mod:`r1v.rl.process`).

The run folder is the reward model: ``final/trainable.safetensors`` (trained parts and the head) with
the run's ``config.yaml``. Point the ``reward_model`` reward at it (``rewards.reward_model.path=runs/rm``)
to score GRPO completions or ``stage=make_pairs`` candidates with the images — one composition end to end.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r1v.core.errors import ConfigError
from r1v.core.interfaces import Sample
from r1v.data.audio import audio_batch, audio_inputs
from r1v.data.collate import PairCollator, check_pairs
from r1v.data.steps import UNITS
from r1v.rl.grpo import completion_rows
from r1v.rl.preference import bradley_terry_loss
from r1v.rl.process import process_loss, step_batch, step_softmin
from r1v.stages.base import LightningStage

HEAD = "reward_head"
POOLS = ("last", "softmin", "steps")
OBJECTIVES = ("pairwise", "process")


def head_knobs(stage: Mapping[str, Any] | None) -> tuple[str, float]:
    """``stage.head``'s (pool, temperature), checked: one line naming the knob and what is allowed."""
    node = dict((stage or {}).get("head") or {})
    pool, temperature = str(node.get("pool", "last")), float(node.get("temperature", 1.0))
    if pool not in POOLS:
        raise ConfigError(f"stage.head.pool: '{pool}' is not one of {', '.join(POOLS)}")
    if temperature <= 0:
        raise ConfigError(f"stage.head.temperature: {temperature:g} must be > 0")
    return pool, temperature


def step_unit(stage: Mapping[str, Any] | None) -> str:
    """``stage.head.step_unit`` (where ``pool=steps`` and the process objective read step scores), checked."""
    unit = str(dict((stage or {}).get("head") or {}).get("step_unit", "sentence"))
    if unit not in UNITS:
        raise ConfigError(f"stage.head.step_unit: '{unit}' is not one of {', '.join(UNITS)}")
    return unit


def objective_knob(stage: Mapping[str, Any] | None) -> str:
    """``stage.objective``, checked against the pool it needs: one line naming the knob and what is allowed."""
    objective = str((stage or {}).get("objective", "pairwise"))
    if objective not in OBJECTIVES:
        raise ConfigError(f"stage.objective: '{objective}' is not one of {', '.join(OBJECTIVES)}")
    pool = head_knobs(stage)[0]
    if objective == "process" and pool != "steps":
        raise ConfigError(f"stage.head.pool: '{pool}' with stage.objective=process; the process objective scores a "
                          "chain by its steps: set stage.head.pool=steps")  # fmt: skip
    return objective


def add_head(model: nn.Module) -> list[str]:
    """Attach the scalar head ``model.reward_head`` (hidden → 1; zero bias, small weights so that
    scores start near 0); returns its parameter names."""
    from r1v.runtime.weights import gathered

    hidden = int(model.backbone.config.hidden_size)
    head = nn.Linear(hidden, 1)  # partitioned when built inside ZeRO-3's zero.Init: write it gathered
    with gathered(head, modifier_rank=0), torch.no_grad():
        head.weight.normal_(0.0, 1.0 / hidden**0.5 / 10)
        head.bias.zero_()
    head.to(next(model.backbone.parameters()).dtype)
    model.reward_head = head
    return [f"{HEAD}.weight", f"{HEAD}.bias"]


def _hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            pixel_values: torch.Tensor | None, **media: Any) -> torch.Tensor:  # fmt: skip
    embeds = model.embed(input_ids, pixel_values, **media)  # [B, L, D] (media: audio_features/audio_frames)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return model.backbone.base_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                     position_ids=position_ids).last_hidden_state  # fmt: skip


def token_scores(model: nn.Module, hidden: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]``: the head on each completion token (the completions fill the last ``width`` columns)."""
    head = model.reward_head
    return head(hidden[:, -width:].to(head.weight.dtype)).squeeze(-1).float()


def scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           pixel_values: torch.Tensor | None, completion_mask: torch.Tensor | None = None, pool: str = "last",
           temperature: float = 1.0, step_mask: torch.Tensor | None = None, **media: Any) -> torch.Tensor:  # fmt: skip
    """``[B]`` scalar scores (rows laid out as :func:`r1v.rl.grpo.completion_rows`: left-padded prompts,
    right-padded completions): the head on each row's last real token (``pool="last"``), the soft minimum of
    the head over the completion's tokens (``pool="softmin"``; needs ``completion_mask`` ``[B, T]``) or over its
    step-end tokens (``pool="steps"``; needs ``step_mask`` ``[B, T]``, :func:`r1v.rl.process.step_batch`)."""
    hidden = _hidden(model, input_ids, attention_mask, pixel_values, **media)
    head = model.reward_head
    if pool == "steps":
        return step_softmin(token_scores(model, hidden, step_mask.shape[1]), step_mask, temperature)
    if pool == "softmin":
        s = token_scores(model, hidden, completion_mask.shape[1])  # [B, T]
        s = s.masked_fill(completion_mask.to(s.device) == 0, float("inf"))  # padding never the minimum
        return -temperature * torch.logsumexp(-s / temperature, dim=1)
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)  # [B] index of the last 1
    h = hidden[torch.arange(len(last), device=hidden.device), last]  # [B, D]
    return head(h.to(head.weight.dtype)).squeeze(-1).float()


def check_step_labels(cfg: Mapping[str, Any], datasets: Mapping[str, Any]) -> None:
    """Refuse pair data without step labels under ``stage.objective=process``, in one line."""
    for split, ds in datasets.items():
        if ds is not None and len(ds) and "chosen_steps" not in ds[0].meta:
            raise ConfigError(f"stage.objective=process: the {split} data '{cfg['data']['name']}' has no step labels "
                              "(meta chosen_steps/rejected_steps); use data=synthetic_hard_pairs, or "
                              "stage.objective=pairwise")  # fmt: skip


class RewardModelStage(LightningStage):
    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        self.pool, self.temperature = head_knobs(self.stage)
        self.objective, self.unit = objective_knob(self.stage), step_unit(self.stage)
        self.flawed_weight = float(self.stage.get("flawed_weight", 1.0))
        if self.flawed_weight <= 0:
            raise ConfigError(f"stage.flawed_weight: {self.flawed_weight:g} must be > 0")
        self.trainable += add_head(self.model)
        if self.cfg.get("checkpoint"):  # a previous reward-model run: its head too
            from r1v.model.load import load_trainable

            load_trainable(self.model, self.cfg["checkpoint"])

    def attach_data(self, train: Any, val: Any) -> None:
        check_pairs(self.cfg, {"train": train, "val": val})
        if objective_knob(self.stage) == "process":
            check_step_labels(self.cfg, {"train": train, "val": val})
        super().attach_data(train, val)

    def train_dataloader(self) -> Any:
        return self.resumable_loader(self.datasets["train"], PairCollator(self.processor, self.data_limits()))

    def _pair_scores(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool == "steps":
            return self._process(batch)[2:]
        dev = self.device
        px = batch["pixel_values"].to(dev) if batch["pixel_values"] is not None else None
        audio = {k: v.to(dev) for k, v in audio_inputs(batch).items()}  # {} without audio
        s = scores(
            self.model,
            batch["input_ids"].to(dev),
            batch["attention_mask"].to(dev),
            px,
            batch["completion_mask"],
            self.pool,
            self.temperature,
            **audio,
        )  # [2B]
        b = len(batch["samples"])
        return s[:b], s[b:]

    def _process(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor,
                                                       torch.Tensor]:  # fmt: skip
        """(process loss, its metrics, chosen and rejected chain scores) of a pair batch, one forward pass."""
        dev, samples = self.device, batch["samples"]
        px = batch["pixel_values"].to(dev) if batch["pixel_values"] is not None else None
        audio = {k: v.to(dev) for k, v in audio_inputs(batch).items()}
        texts = [s.meta["chosen"] for s in samples] + [s.meta["rejected"] for s in samples]
        labels = [s.meta.get("chosen_steps") for s in samples] + [s.meta.get("rejected_steps") for s in samples]
        width = batch["completion_mask"].shape[1]
        mask, targets = step_batch(self.processor.tokenizer, texts, width, labels, self.unit)
        hidden = _hidden(self.model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev), px, **audio)
        tok = token_scores(self.model, hidden, width)  # [2B, T]
        loss, metrics = process_loss(tok, targets, self.flawed_weight)
        chain = step_softmin(tok, mask, self.temperature)
        return loss, metrics, chain[: len(samples)], chain[len(samples) :]

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.objective == "pairwise":
            return bradley_terry_loss(*self._pair_scores(batch))
        loss, metrics, chosen, rejected = self._process(batch)
        return loss, {**bradley_terry_loss(chosen, rejected)[1], **metrics}  # pair metrics of the chain scores too

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.begin_batch(batch)
        if batch.get("empty"):
            return self.empty_loss()
        loss, metrics = self._loss(batch)
        n = len(batch["samples"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=n)
        return loss

    def validation_step(self, samples: list[Sample], batch_idx: int) -> None:
        batch = PairCollator(self.processor)(samples)
        if batch.get("empty"):
            return
        loss, metrics = self._loss(batch)
        n = len(batch["samples"])
        self.log("val/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=n)


class LoadedRewardModel:
    """A ``stage=reward_model`` run folder, ready to score (prompt + images, completion) pairs."""

    def __init__(self, run: str | Path, device: str = "cpu") -> None:
        from omegaconf import OmegaConf

        from r1v.core.registry import get_registry
        from r1v.model.build import build
        from r1v.model.load import load_trainable
        from r1v.runtime.runs import trained_weights

        cfg: Mapping[str, Any] = OmegaConf.to_container(OmegaConf.load(Path(run) / "config.yaml"), resolve=True)
        self.model, self.processor = build(cfg["model"], get_registry())
        self.pool, self.temperature = head_knobs(cfg.get("stage"))
        objective_knob(cfg.get("stage"))  # a process run scores with pool=steps
        self.unit = step_unit(cfg.get("stage"))
        add_head(self.model)
        load_trainable(self.model, str(trained_weights(Path(run))))
        self.model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def score(self, samples: list[Sample], completions: list[str]) -> list[float]:
        tok = self.processor.tokenizer
        encs = [self.processor.encode(s, target=None) for s in samples]
        comp = [tok(c + tok.eos_token, add_special_tokens=False)["input_ids"] for c in completions]
        ids, attn, cmask = completion_rows([e["input_ids"] for e in encs], comp, tok.pad_token_id)
        tiles = [e["pixel_values"] for e in encs if e["pixel_values"] is not None]
        px = torch.cat(tiles).to(self.device) if tiles else None
        audio = {k: v.to(self.device) for k, v in audio_inputs(audio_batch(encs)).items()}
        steps = step_batch(tok, completions, cmask.shape[1], unit=self.unit)[0] if self.pool == "steps" else None
        return scores(self.model, ids.to(self.device), attn.to(self.device), px, cmask, self.pool, self.temperature,
                      steps, **audio).tolist()  # fmt: skip

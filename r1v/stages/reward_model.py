"""``stage=reward_model``: a scalar-head reward model on preference pairs (Bradley-Terry), in the spirit of
Skywork-VL Reward: the composition (vision encoder frozen, adapter + backbone trainable by default)
plus a linear head on the last token's final hidden state (``stage.head.pool=last``, the default), or on every
completion token, pooled by a soft minimum (``stage.head.pool=softmin``: −τ·log Σ exp(−s_t/τ) over the
completion's tokens, τ = ``stage.head.temperature``). The soft minimum lets one bad step sink a chain without the
last token's state having to carry it: a chain that reaches the right answer by a wrong step is judged where the
step is.

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

from r1v.core.interfaces import Sample
from r1v.data.audio import audio_batch, audio_inputs
from r1v.data.collate import PairCollator, check_pairs
from r1v.rl.grpo import completion_rows
from r1v.rl.preference import bradley_terry_loss
from r1v.stages.base import LightningStage

HEAD = "reward_head"
POOLS = ("last", "softmin")


def head_knobs(stage: Mapping[str, Any] | None) -> tuple[str, float]:
    """``stage.head``'s (pool, temperature), checked: one line naming the knob and what is allowed."""
    from r1v.core.errors import ConfigError

    node = dict((stage or {}).get("head") or {})
    pool, temperature = str(node.get("pool", "last")), float(node.get("temperature", 1.0))
    if pool not in POOLS:
        raise ConfigError(f"stage.head.pool: '{pool}' is not one of {', '.join(POOLS)}")
    if temperature <= 0:
        raise ConfigError(f"stage.head.temperature: {temperature:g} must be > 0")
    return pool, temperature


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


def scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           pixel_values: torch.Tensor | None, completion_mask: torch.Tensor | None = None, pool: str = "last",
           temperature: float = 1.0, **media: Any) -> torch.Tensor:  # fmt: skip
    """``[B]`` scalar scores (rows laid out as :func:`r1v.rl.grpo.completion_rows`: left-padded prompts,
    right-padded completions): the head on each row's last real token (``pool="last"``) or the soft minimum of
    the head over the completion's tokens (``pool="softmin"``; needs ``completion_mask`` ``[B, T]``)."""
    embeds = model.embed(input_ids, pixel_values, **media)  # [B, L, D] (media: audio_features/audio_frames)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = model.backbone.base_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                       position_ids=position_ids).last_hidden_state  # fmt: skip
    head = model.reward_head
    if pool == "softmin":
        t = completion_mask.shape[1]  # the completions fill the last T columns
        s = head(hidden[:, -t:].to(head.weight.dtype)).squeeze(-1).float()  # [B, T]
        s = s.masked_fill(completion_mask.to(s.device) == 0, float("inf"))  # padding never the minimum
        return -temperature * torch.logsumexp(-s / temperature, dim=1)
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)  # [B] index of the last 1
    h = hidden[torch.arange(len(last), device=hidden.device), last]  # [B, D]
    return head(h.to(head.weight.dtype)).squeeze(-1).float()


class RewardModelStage(LightningStage):
    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        self.pool, self.temperature = head_knobs(self.stage)
        self.trainable += add_head(self.model)
        if self.cfg.get("checkpoint"):  # a previous reward-model run: its head too
            from r1v.model.load import load_trainable

            load_trainable(self.model, self.cfg["checkpoint"])

    def attach_data(self, train: Any, val: Any) -> None:
        check_pairs(self.cfg, {"train": train, "val": val})
        super().attach_data(train, val)

    def train_dataloader(self) -> Any:
        return self.resumable_loader(self.datasets["train"], PairCollator(self.processor, self.data_limits()))

    def _pair_scores(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.begin_batch(batch)
        if batch.get("empty"):
            return self.empty_loss()
        loss, metrics = bradley_terry_loss(*self._pair_scores(batch))
        n = len(batch["samples"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=n)
        return loss

    def validation_step(self, samples: list[Sample], batch_idx: int) -> None:
        batch = PairCollator(self.processor)(samples)
        if batch.get("empty"):
            return
        loss, metrics = bradley_terry_loss(*self._pair_scores(batch))
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
        return scores(self.model, ids.to(self.device), attn.to(self.device), px, cmask, self.pool, self.temperature,
                      **audio).tolist()  # fmt: skip

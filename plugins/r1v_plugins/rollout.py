"""Rollout engines: ``hf`` generates with the backbone's own ``generate`` and KV cache."""

from __future__ import annotations

from typing import Any

import torch

from r1v import hookimpl
from r1v.data.processor import Processor
from r1v.interfaces import Sample


class HFGenerate:
    """Reference engine: left-padded batch, image tokens spliced, transformers' ``generate``."""

    def __init__(self, temperature: float = 0.6, top_p: float = 0.95, repetition_penalty: float = 1.0) -> None:
        self.temperature, self.top_p, self.repetition_penalty = temperature, top_p, repetition_penalty

    @torch.no_grad()
    def generate(self, model: Any, processor: Processor, samples: list[Sample], max_new_tokens: int,
                 greedy: bool = False) -> list[str]:  # fmt: skip
        batch = processor.collate([processor.encode(s, target=None) for s in samples], padding_side="left")
        device = next(model.parameters()).device
        sampling = {} if greedy else {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        out = model.generate(
            batch["input_ids"].to(device), batch["attention_mask"].to(device),
            None if batch["pixel_values"] is None else batch["pixel_values"].to(device),
            max_new_tokens=max_new_tokens, do_sample=not greedy, repetition_penalty=self.repetition_penalty,
            pad_token_id=processor.tokenizer.pad_token_id, eos_token_id=processor.tokenizer.eos_token_id,
            **{k: v for k, v in sampling.items() if k != "do_sample"},
        )  # fmt: skip
        return [processor.decode_completion(row) for row in out.tolist()]


def hf(temperature: float = 0.6, top_p: float = 0.95, repetition_penalty: float = 1.0) -> HFGenerate:
    """transformers generate() with the KV cache (reference engine; R1V's sampling defaults)."""
    return HFGenerate(temperature, top_p, repetition_penalty)


@hookimpl
def register_rollout_engines(register):
    register("hf", hf)

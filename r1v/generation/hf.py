"""Rollout engines: ``hf`` (transformers' ``generate``, the reference) and ``static`` (static KV cache,
CUDA graphs, GPU sampling: :mod:`r1v.generation`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from r1v.core.interfaces import Sample
from r1v.data.audio import audio_inputs
from r1v.data.processor import Processor
from r1v.generation.sampling import TopPMethod

PER_SAMPLE_KNOBS = ("repetition_penalty",)


class PerSampleRepetitionPenalty:
    """CTRL's repetition penalty with one factor per batch row (DRLC gives every sample its own P).

    For each row b and every token already generated in it: a positive logit is divided by P_b, a
    negative one multiplied by P_b — the rule of transformers' ``RepetitionPenaltyLogitsProcessor``,
    row-wise. With ``inputs_embeds`` (images spliced) ``input_ids`` holds only generated tokens, so the
    prompt is not penalised.
    """

    def __init__(self, penalties: torch.Tensor) -> None:
        self.penalties = penalties  # (B,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] == 0:
            return scores
        p = self.penalties.to(scores.device, scores.dtype)[:, None]  # (B, 1)
        seen = torch.gather(scores, 1, input_ids)  # (B, t)
        seen = torch.where(seen < 0, seen * p, seen / p)
        return scores.scatter(1, input_ids, seen)


class HFGenerate:
    """Reference engine: left-padded batch, image tokens spliced, transformers' ``generate``."""

    name = "hf"  # the registry name, for messages

    def __init__(self, temperature: float = 0.6, top_p: float = 0.95, repetition_penalty: float = 1.0) -> None:
        self.temperature, self.top_p, self.repetition_penalty = temperature, top_p, repetition_penalty

    def generate(self, model: Any, processor: Processor, samples: list[Sample], max_new_tokens: int,
                 greedy: bool = False,
                 sample_params: Sequence[Mapping[str, float]] | None = None) -> list[str]:  # fmt: skip
        """Completions for ``samples``; ``sample_params[i]`` may set sample i's ``repetition_penalty``."""
        ids = self.generate_ids(model, processor, samples, max_new_tokens, greedy, sample_params)
        return [processor.decode_completion(row) for row in ids]

    @torch.no_grad()
    def generate_ids(self, model: Any, processor: Processor, samples: list[Sample], max_new_tokens: int,
                     greedy: bool = False,
                     sample_params: Sequence[Mapping[str, float]] | None = None) -> list[list[int]]:  # fmt: skip
        """Completion token ids per sample: up to and including EOS (no EOS when cut at the budget)."""
        from transformers import LogitsProcessorList

        batch = processor.collate([processor.encode(s, target=None) for s in samples], padding_side="left")
        device = next(model.parameters()).device
        sampling = {} if greedy else {"temperature": self.temperature, "top_p": self.top_p}
        extra: dict[str, Any] = {"repetition_penalty": self.repetition_penalty}
        if sample_params is not None:
            if len(sample_params) != len(samples):
                raise ValueError(f"sample_params has {len(sample_params)} entries for {len(samples)} samples")
            unknown = sorted({k for p in sample_params for k in p} - set(PER_SAMPLE_KNOBS))
            if unknown:
                raise ValueError(f"rollout 'hf' cannot set '{unknown[0]}' per sample (it can: "
                                 f"{', '.join(PER_SAMPLE_KNOBS)})")  # fmt: skip
            penalties = torch.tensor([float(p.get("repetition_penalty", self.repetition_penalty))
                                      for p in sample_params])  # fmt: skip
            # repetition_penalty=1.0 overrides a generation_config default (Qwen ships 1.05), which would
            # otherwise apply on top of every sample's own penalty
            extra = {"repetition_penalty": 1.0,
                     "logits_processor": LogitsProcessorList([PerSampleRepetitionPenalty(penalties)])}  # fmt: skip
        out = model.generate(
            batch["input_ids"].to(device), batch["attention_mask"].to(device),
            None if batch["pixel_values"] is None else batch["pixel_values"].to(device),
            max_new_tokens=max_new_tokens, do_sample=not greedy,
            pad_token_id=processor.tokenizer.pad_token_id, eos_token_id=processor.tokenizer.eos_token_id,
            **sampling, **extra, **{k: v.to(device) for k, v in audio_inputs(batch).items()},
        )  # fmt: skip
        eos, pad = processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id
        rows = []
        for row in out.tolist():
            if eos in row:
                row = row[: row.index(eos) + 1]
            elif pad != eos:
                row = [t for t in row if t != pad]
            rows.append(row)
        return rows


def hf(temperature: float = 0.6, top_p: float = 0.95, repetition_penalty: float = 1.0) -> HFGenerate:
    """transformers generate() with the KV cache (reference engine; R1V's sampling defaults)."""
    return HFGenerate(temperature, top_p, repetition_penalty)


def static(temperature: float = 0.6, top_p: float = 0.95, repetition_penalty: float = 1.0, cuda_graphs: bool = True,
           compile: bool = False, window: int = 128, max_batch_size: int | None = None,
           check_every: int = 16, fuse: bool = False, top_p_method: TopPMethod = "auto",
           attention: Literal["auto", "sdpa", "triton"] = "auto",
           compile_mode: Literal["default", "max-autotune"] = "default", split_k: bool = False,
           compile_scope: Literal["layer", "step"] = "layer") -> Any:  # fmt: skip
    """Static KV cache + CUDA graphs, batched GPU sampling (Llama/Qwen2/Qwen3).

    ``compile``: torch.compile the per-layer pointwise work (one compilation serves every layer; ``compile_mode``
    ``max-autotune`` also lets inductor pick Triton GEMMs for the decode shapes, a slower first compile);
    ``fuse``: one GEMM for q/k/v and one for gate/up, from a copy of those weights refreshed every call, made
    for as many layers as fit beside the weights and the KV cache (a one-line notice when not all do);
    ``attention``: ``triton`` (a split-K decode kernel over each row's filled cache columns, one CUDA graph for
    the whole rollout), ``sdpa`` (masked SDPA over ``window``-column windows, one graph per window) or ``auto``
    (triton on a GPU where it imports); ``top_p_method``: ``sort`` (transformers' rule, verbatim), ``bisect``
    (the same kept set up to float rounding, no vocabulary sort), ``triton`` or ``auto`` (triton on the GPU);
    ``split_k``: decode GEMMs whose output has few tiles for the GPU's SMs (q|k|v, o and down projections at
    batch 64) as split-K batched products; ``compile_scope``: ``layer`` (the per-layer functions) or ``step``
    (every layer of a decode step as one graph: residual adds, norms and rotary fuse across layer boundaries).
    """
    from r1v.generation import StaticEngine

    return StaticEngine(temperature, top_p, repetition_penalty, cuda_graphs, compile, window, max_batch_size,
                        check_every, fuse, top_p_method, attention, compile_mode, split_k, compile_scope)  # fmt: skip

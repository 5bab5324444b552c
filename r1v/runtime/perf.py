"""Model FLOPs of a training step, counted on real tokens only, and the MFU they make per GPU.

The count is the usual analytic one (PaLM appendix B / Megatron's "model FLOPs"), per part of the VLM:

- every matmul weight ``W`` that a token passes through costs ``2·|W|`` FLOPs forward; backward costs
  another ``2·|W|`` for the activation gradient when a gradient flows through the part (it is trainable, or
  a trainable part comes before it) and ``2·|W|`` for the weight gradient when the part is trainable. So full
  fine-tuning is the familiar ``6·N·t``; R1V's adapter-only stage is ``2·N_vision·t_v`` (frozen encoder in
  front: no backward) + ``6·N_adapter·t_a`` + ``4·N_backbone·t`` (activation gradients only);
- attention scores and their weighted sum cost ``2·n²·d`` per causal layer and sample of ``n`` tokens
  (``4·s²·d`` for the vision encoder's full attention over ``s`` patches), ×3 when a gradient flows;
- recomputation by activation checkpointing is not counted (model FLOPs, not hardware FLOPs), and padding
  is never counted: the same samples padded or packed have the same FLOPs, so MFU compares them fairly.

Matmul weights are found structurally (every ``nn.Linear`` and patch ``nn.Conv2d``; the input embedding is a
lookup, the LM head a matmul), attention widths from each part's query projection.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

PARTS = ("vision", "adapter", "backbone")
# Dense bf16 tensor-core peak per GPU (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "H800": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


@dataclass(frozen=True)
class PartShape:
    matmul_params: int  # Σ |W| over the matmuls one token passes through
    layers: int  # attention layers
    attn_width: int  # heads × head_dim of the queries
    trainable: bool


def part_shape(module: nn.Module) -> PartShape:
    """Matmul parameter count, attention layers and width of one part (structural, no config needed)."""
    matmul, layers, width = 0, 0, 0
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            matmul += m.weight.numel() if m.weight.numel() else int(getattr(m.weight, "ds_numel", 0))
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(m, nn.Linear) and leaf in ("q_proj", "qkv", "query"):
            layers += 1
            width = m.out_features // (3 if leaf == "qkv" else 1)
    trainable = any(p.requires_grad for p in module.parameters())
    return PartShape(matmul, layers, width, trainable)


class FlopCounter:
    """Per-step model FLOPs of a :class:`~r1v.model.vlm.VisionLanguageModel` (built once per run)."""

    def __init__(self, model: nn.Module) -> None:
        self.shapes = {p: part_shape(getattr(model, p)) for p in PARTS}
        head = model.backbone.get_output_embeddings() if hasattr(model.backbone, "get_output_embeddings") else None
        w = getattr(head, "weight", None)  # (vocab, hidden); under ZeRO-3 a 0-element shard with its full ds_numel
        self.head_params = 0 if w is None else (w.numel() or int(getattr(w, "ds_numel", 0)))
        vision = model.vision
        grid = int(getattr(vision, "grid_size", 0))
        self.patches = grid * grid  # tokens per tile inside the encoder (class token ignored)
        self.tile_tokens = int(getattr(model, "tokens_per_tile", 0))  # tokens per tile after the adapter
        flows, self.mult_w, self.mult_a = False, {}, {}
        for p in PARTS:  # a gradient flows through a part when it or an earlier part is trainable
            s = self.shapes[p]
            flows = flows or s.trainable
            self.mult_w[p] = 2 + (2 if flows else 0) + (2 if s.trainable else 0)
            self.mult_a[p] = 3 if flows else 1

    def step(self, lengths: Sequence[int], tiles: int, head_tokens: int | None = None) -> float:
        """FLOPs of one forward + backward over samples of these token lengths with ``tiles`` image tiles.
        ``head_tokens``: the tokens the LM head runs on when it runs on fewer than all of them (SFT's chunked
        loss computes logits for the answer tokens only); None: every token."""
        v, a, b = (self.shapes[p] for p in PARTS)
        tokens = sum(lengths)
        head = tokens if head_tokens is None else head_tokens
        flops = self.mult_w["backbone"] * ((b.matmul_params - self.head_params) * tokens + self.head_params * head)
        flops += self.mult_a["backbone"] * 2 * b.layers * b.attn_width * sum(n * n for n in lengths)
        if tiles:
            flops += self.mult_w["vision"] * v.matmul_params * tiles * self.patches
            flops += self.mult_a["vision"] * 4 * v.layers * v.attn_width * tiles * self.patches**2
            flops += self.mult_w["adapter"] * a.matmul_params * tiles * self.tile_tokens
        return float(flops)


def peak_flops(device: torch.device | None = None) -> float | None:
    """Dense bf16 peak of this GPU (FLOP/s); None on CPU or an unknown GPU."""
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


class Throughput:
    """Per batch (one GPU): seconds since the previous batch ended, tokens/s and model TFLOP/s on real tokens, MFU
    against the GPU's dense bf16 peak, and the memory high-water marks (benchmarks/sft_throughput.py reads them).

    :meth:`count` remembers a batch's work when the stage has run it; :meth:`stats` is called when the batch ends.
    """

    def __init__(self, chunked_head: bool = False) -> None:
        self.chunked_head = chunked_head  # the LM head ran on answer tokens only (stage.loss_chunk_tokens)
        self.flops: FlopCounter | None = None  # built on the first batch, when the model exists
        self.peak: float | None = None
        self.clock: float | None = None
        self.work: tuple[int, int, float, int, int] | None = None  # real, padded, FLOPs, tiles, answer tokens

    def count(self, model: nn.Module, device: torch.device, batch: dict) -> None:
        """This batch's real (unpadded) tokens, padded tokens, tiles, answer tokens and model FLOPs."""
        if self.flops is None:
            self.flops, self.peak = FlopCounter(model), peak_flops(device)
        lengths = batch.get("lengths") or [int(batch["input_ids"].shape[1])] * int(batch["input_ids"].shape[0])
        tiles = 0 if batch["pixel_values"] is None else int(batch["pixel_values"].shape[0])
        answer = batch["loss_tokens"]  # counted by the collator, on the CPU
        flops = self.flops.step(lengths, tiles, answer if self.chunked_head else None)
        self.work = (sum(lengths), int(batch["input_ids"].numel()), flops, tiles, answer)

    def stats(self, device: torch.device) -> dict[str, float]:
        """The metrics of the batch that just ended. One device sync, so the clock sees finished work."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now, last = time.perf_counter(), self.clock
        self.clock = now
        stats: dict[str, float] = {}
        if device.type == "cuda":  # high-water marks since the run started (the planner's prediction)
            stats["perf/peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            stats["perf/peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        work = self.work
        if work is not None:  # the first batch too (no rate: its clock starts here): its shape may set the peak
            stats.update({"perf/real_tokens": float(work[0]), "perf/padded_tokens": float(work[1]),
                          "perf/tiles": float(work[3]), "perf/answer_tokens": float(work[4])})  # fmt: skip
        if last is not None and work is not None:
            dt = now - last
            real, _, flops = work[:3]
            stats.update({"perf/batch_s": dt, "perf/tokens_per_s": real / dt, "perf/tflops": flops / dt / 1e12})
            if self.peak:
                stats["perf/mfu"] = flops / dt / self.peak
        return stats

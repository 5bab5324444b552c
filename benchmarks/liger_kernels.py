"""Liger-Kernel against the built-in path and ``torch.compile`` on the training forward + backward (issue 24).

    python benchmarks/liger_kernels.py --out results/liger_kernels_<card>.json          (one GPU, ≈ 3 min)

Qwen2.5-1.5B shapes (random bf16 weights, every weight trained, as full fine-tuning) in two settings:

- ``sft``: packed rows of 2 × 4,096 tokens, the loss over every token (``stage.loss_chunk_tokens=4096``);
- ``grpo``: the update's micro-batch, 8 rows of 256 prompt + 512 completion tokens, log-probs of the completion.

Arms, each built from the same weights, in one process, timed over ``--steps`` forward + backward passes after
warm-up (no optimizer step: what the kernels change):

- ``built-in``: transformers' Qwen2 layers, the chunked LM head + float32 log-softmax (r1v.rl.grpo.chunked_logprobs);
- ``liger``: ``stage.kernels=liger`` (r1v.runtime.kernels: fused RMSNorm, SwiGLU, linear cross-entropy);
- ``compile``: every decoder layer and the final norm ``torch.compile``d, the built-in head;
- ``compile + liger head``: the compiled layers with Liger's fused linear cross-entropy.

Per arm: ms per pass and × the built-in arm, MFU on the tokens (6 · params · tokens + attention), peak memory,
and the numerics check of issue 24: the log-probs' largest and mean difference from the built-in arm, and the
largest relative difference of any weight's gradient.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM


def arms(base: torch.nn.Module) -> dict[str, Any]:
    """name -> a function building that arm's model from ``base`` (a deep copy each)."""
    from r1v.runtime.kernels import FUSED_HEAD, apply_kernels

    def builtin() -> torch.nn.Module:
        return copy.deepcopy(base)

    def liger() -> torch.nn.Module:
        m = copy.deepcopy(base)
        apply_kernels(SimpleNamespace(backbone=m), "liger")
        return m

    def compiled(head: bool = False) -> torch.nn.Module:
        m = copy.deepcopy(base)
        for layer in m.model.layers:
            layer.compile()
        m.model.norm.compile()
        if head:
            setattr(m.get_output_embeddings(), FUSED_HEAD, True)
        return m

    return {"built-in": builtin, "liger": liger, "compile": compiled,
            "compile + liger head": lambda: compiled(head=True)}  # fmt: skip


def one_pass(lm: torch.nn.Module, ids: torch.Tensor, n: int, chunk: int) -> torch.Tensor:
    """Forward and backward of the summed log-probs of the last ``n`` tokens; returns the log-probs (detached)."""
    from r1v.rl.grpo import chunked_logprobs

    hidden = lm.model(input_ids=ids).last_hidden_state  # (B, L, D)
    lp, _ = chunked_logprobs(lm.get_output_embeddings(), hidden[:, -n - 1 : -1], ids[:, -n:], chunk)
    (-lp.mean()).backward()
    return lp.detach()


def measure(build: Any, ids: torch.Tensor, n: int, chunk: int, steps: int, ref: dict | None) -> dict[str, Any]:
    lm = build()
    lm.train()
    for _ in range(3):  # warm-up: compilation, autotuning, allocator
        lm.zero_grad(set_to_none=True)
        lp = one_pass(lm, ids, n, chunk)
    sync()
    if ids.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        lm.zero_grad(set_to_none=True)
        lp = one_pass(lm, ids, n, chunk)
    sync()
    ms = (time.perf_counter() - t0) / steps * 1e3
    row: dict[str, Any] = {
        "ms_per_pass": ms,
        "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if ids.is_cuda else 0.0,
    }
    grads = {k: p.grad.to("cpu", copy=True) for k, p in lm.named_parameters() if p.grad is not None}  # off the GPU
    if ref is None:
        row["_lp"], row["_grads"] = lp.float(), grads
    else:
        d = (lp.float() - ref["_lp"]).abs()
        row["logp_max_abs_diff"], row["logp_mean_abs_diff"] = float(d.max()), float(d.mean())
        row["grad_max_rel_diff"] = max(rel(g, ref["_grads"][k]) for k, g in grads.items())
    del lm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=None, help="keep the first N layers (default: all 28)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--settings", nargs="+", default=["sft", "grpo"], choices=["sft", "grpo"])
    ap.add_argument("--arms", nargs="+", default=None, help="subset of the arms (default: all)")
    ap.add_argument("--cpu", action="store_true", help="smoke run of the plumbing on the CPU (use --layers 1)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    dev = torch.device("cpu" if args.cpu else "cuda")
    from r1v.model.parts.qwen2 import qwen2

    torch.manual_seed(0)
    with torch.device(dev):
        base = qwen2("qwen2_5_1_5b", dtype="bfloat16", num_hidden_layers=args.layers).model
    cfg = base.config
    params = sum(p.numel() for p in base.parameters())
    card = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in card), 989.0) * 1e12
    settings = {"sft": (2, 4096, 4095, 4096), "grpo": (8, 768, 512, 1024)}  # rows, length, scored tokens, chunk
    res: dict[str, Any] = {"card": card, "torch": torch.__version__, "commit": os.environ.get("R1V_COMMIT"),
                           "command": "python " + " ".join(sys.argv), "layers": cfg.num_hidden_layers,
                           "params": params, "settings": {}}  # fmt: skip
    for name in args.settings:
        b, length, n, chunk = settings[name]
        if args.cpu:
            b, length, n, chunk = 1, 64, 32, 16
        ids = torch.randint(0, cfg.vocab_size, (b, length), device=dev)
        tokens = b * length
        attn = 12 * cfg.num_hidden_layers * cfg.hidden_size * length * tokens / 2  # causal: half the square
        flops = 6 * params * tokens + attn
        rows: dict[str, Any] = {}
        ref = None
        for arm, build in arms(base).items():
            if args.arms and arm not in args.arms and arm != "built-in":
                continue
            row = measure(build, ids, n, chunk, args.steps, ref)
            row["mfu"] = flops / (row["ms_per_pass"] / 1e3) / peak
            if ref is None:
                ref = row
            row["x_built_in"] = ref["ms_per_pass"] / row["ms_per_pass"]
            rows[arm] = row
            print(f"{name:5s} {arm:22s} {row['ms_per_pass']:8.1f} ms  {row['x_built_in']:5.2f}x  MFU {row['mfu']:.3f}"
                  f"  peak {row['peak_GiB']:5.1f} GiB  logp diff max {row.get('logp_max_abs_diff', 0):.4f}"
                  f" mean {row.get('logp_mean_abs_diff', 0):.5f}  grad rel {row.get('grad_max_rel_diff', 0):.4f}",
                  flush=True)  # fmt: skip
        for row in rows.values():
            row.pop("_lp", None)
            row.pop("_grads", None)
        res["settings"][name] = {"rows": b, "length": length, "scored_tokens": n, "arms": rows}
    emit(res, args.out)


if __name__ == "__main__":
    main()

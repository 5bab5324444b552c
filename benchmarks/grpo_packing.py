"""GRPO's update pass padded against packed (``stage.packing=true``, r1v/rl/packed.py), side by side (issue 24).

    python benchmarks/grpo_packing.py --out results/grpo_packing_<card>.json            (one GPU, ≈ 2 min)

Qwen2.5-1.5B shapes (random bf16 weights, every weight trained), one micro-batch of 8 sequences: prompts of
192–256 tokens and completions drawn per setting —

- ``budget``: every completion 512 tokens (what ``gpu_grpo_throughput.sh`` measures: random weights never stop);
- ``varied``: lengths of a reasoning model's completions under an 8k budget (log-normal, median 1,024, clipped to
  64–8,192), the case R1V's GRPO runs in;

timed over ``--steps`` forward + backward passes of the summed completion log-probs: ``padded`` is
:func:`r1v.rl.grpo.token_logprobs` on rows padded to the longest prompt + longest completion, ``packed`` is
:func:`r1v.rl.packed.packed_token_logprobs` on one row. Also: real and padded tokens, peak memory, and the
log-probs' largest difference between the two.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit


class TextModel(torch.nn.Module):
    """The two methods the log-prob functions call, over a text-only causal LM (no image parts)."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = lm

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pixel_values: Any = None,
                      position_ids: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:  # fmt: skip
        if position_ids is None:  # left-padded rows: positions count real tokens, as the VLM does
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.backbone.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   **kw).last_hidden_state  # fmt: skip


def lengths(setting: str, n: int, gen: torch.Generator) -> list[int]:
    if setting == "budget":
        return [512] * n
    drawn = torch.exp(torch.randn(n, generator=gen) * 0.9 + torch.log(torch.tensor(1024.0)))
    return [int(x) for x in drawn.clamp(64, 8192)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cpu", action="store_true", help="smoke run on the CPU (use --layers 1)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from r1v.model import varlen
    from r1v.model.parts.qwen2 import qwen2
    from r1v.rl.grpo import completion_rows, token_logprobs
    from r1v.rl.packed import packed_rows, packed_token_logprobs

    dev = torch.device("cpu" if args.cpu else "cuda")
    torch.manual_seed(0)
    with torch.device(dev):
        lm = qwen2("qwen2_5_1_5b", dtype="bfloat16", num_hidden_layers=args.layers).model
    varlen.register()
    lm.config._attn_implementation = varlen.NAME  # SDPA for padded rows, the varlen kernel for packed ones
    model = TextModel(lm).train()
    gen = torch.Generator().manual_seed(0)
    vocab = lm.config.vocab_size
    res: dict[str, Any] = {"card": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                           "torch": torch.__version__, "commit": os.environ.get("R1V_COMMIT"),
                           "command": "python " + " ".join(sys.argv), "layers": lm.config.num_hidden_layers,
                           "settings": {}}  # fmt: skip
    for setting in ("budget", "varied"):
        n = args.rows
        prompt_lens = torch.randint(192, 257, (n,), generator=gen).tolist()
        comp_lens = lengths(setting, n, gen)
        if args.cpu:
            prompt_lens, comp_lens = [8 + i for i in range(n)], [4 + 3 * i for i in range(n)]
        prompts = [torch.randint(5, vocab, (p,), generator=gen).tolist() for p in prompt_lens]
        completions = [torch.randint(5, vocab, (c,), generator=gen).tolist() for c in comp_lens]
        ids, attn, cmask = completion_rows(prompts, completions, 0)
        ids, attn, cmask = ids.to(dev), attn.to(dev), cmask.to(dev)
        packed = packed_rows(prompts, completions).to(dev)
        arms = {
            "padded": lambda ids=ids, attn=attn, t=cmask.shape[1]: token_logprobs(model, ids, attn, None, t, 1024)[0],
            "packed": lambda p=packed, s=cmask.shape: packed_token_logprobs(model, p, None, *s, 1024)[0],
        }
        row: dict[str, Any] = {"prompt_tokens": sum(prompt_lens), "completion_tokens": sum(comp_lens),
                               "padded_row_tokens": ids.numel(),
                               "packed_row_tokens": packed.input_ids.numel()}  # fmt: skip
        out = {}
        for arm, fn in arms.items():
            for _ in range(2):  # warm-up
                lm.zero_grad(set_to_none=True)
                (fn() * cmask).sum().backward()
            sync()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                lm.zero_grad(set_to_none=True)
                lp = fn()
                (lp * cmask).sum().backward()
            sync()
            row[f"{arm}_ms"] = (time.perf_counter() - t0) / args.steps * 1e3
            row[f"{arm}_peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
            out[arm] = lp.detach().float()
        row["packed_speedup"] = row["padded_ms"] / row["packed_ms"]
        row["logp_max_abs_diff"] = float(((out["packed"] - out["padded"]) * cmask).abs().max())
        res["settings"][setting] = row
        print(f"{setting:7s} padded {row['padded_ms']:8.1f} ms ({row['padded_row_tokens']} tokens)  packed "
              f"{row['packed_ms']:8.1f} ms ({row['packed_row_tokens']})  {row['packed_speedup']:.2f}x  peak "
              f"{row['padded_peak_GiB']:.1f} / {row['packed_peak_GiB']:.1f} GiB  logp diff "
              f"{row['logp_max_abs_diff']:.4f}", flush=True)  # fmt: skip
    emit(res, args.out)


if __name__ == "__main__":
    main()

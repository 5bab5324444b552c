"""Rollout against the hardware floor (issue 24): the static engine's attention paths side by side, in one process.

    python benchmarks/rollout_floor.py --shape 1.5b --out results/rollout_floor_1p5b_<card>.json
    python benchmarks/rollout_floor.py --shape 32b --layers 24 --batch 32 64 --prompt 1024 2048 --new 1024 \
        --out results/rollout_floor_32b_<card>.json          (an H100 holds 24 of the 64 layers with a useful cache)
    python benchmarks/rollout_floor.py --shape 1.5b --new 8192 --segments 1024 --out …   (R1V's 8k completions)

Random bf16 weights of the preset's shapes (``--layers``: the first N layers only; every figure is then for that
depth, and the 64-layer estimate scales the step by the floors' ratio, said so in the output). EOS never stops a
row, so every row makes the budgeted tokens. Sampling: T 0.6 / top-p 0.95 unless ``--greedy``.

Each engine variant is built, warmed (compilation, graph capture: the whole length for window-graph variants,
whose later windows would otherwise be captured inside the timing), timed over the full budget, then freed. The
prefill is timed apart (one new token) and taken off, so tokens/s is decode only.

The floor of a decode step: one read of every weight a step reads (the layers, final norm and LM head; the input
embedding only where it is the LM head) plus the K/V columns actually filled (each row's prompt and the tokens so
far, not the allocated cache), at the read bandwidth of a large bf16 ``sum`` measured in the same run.
transformers' ``generate()`` is timed over a few steps only (its per-step cost: (t(1 + k) − t(1)) / k).

``--segments N``: also time the first N tokens alone, so (t(new) − t(N)) / (new − N) is the step time over the
later, fuller cache: how the step scales with the filled columns.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout_engine import classes_of, prompts, read_bandwidth

SHAPES = {"0.5b": "qwen2_5_0_5b", "1.5b": "qwen2_5_1_5b", "7b": "qwen2_5_7b", "32b": "r1_distill_qwen_32b"}
# name -> StaticEngine knobs; "baseline" is the engine as it was before issue 24 (graph per 128-column window)
VARIANTS = {
    "baseline: sdpa windows": {"attention": "sdpa"},
    "split-K triton attention": {"attention": "triton"},
    "split-K triton attention + split-K GEMMs": {"attention": "triton", "split_k": True},
    "split-K triton attention + whole-step compile": {"attention": "triton", "compile_scope": "step"},
    "split-K triton attention + split top-p": {"attention": "triton", "top_p_method": "triton_split"},
    # measured 4.5x slower on an H100 (13.8 vs 3.1 ms per step, 2026-12-06): kept to re-check on other torch versions
    "split-K triton attention + max-autotune GEMMs": {"attention": "triton", "compile_mode": "max-autotune"},
}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Any) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def step_floor(lm: Any, filled_mean: float, batch: int, bandwidth: float) -> dict[str, float]:
    """Bytes one decode step must read, and the step time and tokens/s that gives at ``bandwidth``."""
    cfg = lm.config
    embed = lm.model.embed_tokens.weight
    weights = sum(p.numel() * p.element_size() for p in lm.parameters() if p is not embed or cfg.tie_word_embeddings)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_per_col = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * hd * embed.element_size()
    kv = batch * filled_mean * kv_per_col
    ms = (weights + kv) / bandwidth * 1e3
    return {"weight_bytes": weights, "kv_bytes": kv, "ms_per_step": ms, "tokens_per_s": batch / ms * 1e3}


def decode(engine: Any, lm: Any, ids: torch.Tensor, mask: torch.Tensor, new: int, greedy: bool) -> list[list[int]]:
    b = ids.shape[0]
    knobs = {"temperature": [0.6] * b, "top_p": [1.0 if greedy else 0.95] * b, "repetition_penalty": [1.0] * b}
    return engine.decode(lm, lm.model.embed_tokens(ids), mask, new, greedy, knobs, eos=None, pad=0)


def hf_step_ms(lm: Any, ids: torch.Tensor, mask: torch.Tensor, steps: int, greedy: bool) -> float:
    sampling = {} if greedy else {"temperature": 0.6, "top_p": 0.95, "top_k": None}

    def run(n: int) -> None:
        lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=not greedy,
                    pad_token_id=0, eos_token_id=None, **sampling)  # fmt: skip

    run(2)  # warm-up
    return (timed(lambda: run(1 + steps)) - timed(lambda: run(1))) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1.5b")
    ap.add_argument("--layers", type=int, default=None, help="keep the first N layers (32B on an 80 GB card: 24)")
    ap.add_argument("--batch", type=int, nargs="+", default=[64])
    ap.add_argument("--prompt", type=int, nargs=2, default=(192, 256))
    ap.add_argument("--new", type=int, default=512)
    ap.add_argument("--segments", type=int, default=0, help="also time the first N tokens (step time vs filled cache)")
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--fuse", type=int, default=1, help="fused q|k|v and gate|up GEMMs (within the memory budget)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS)[:3], help=f"from: {list(VARIANTS)}")
    ap.add_argument("--hf-steps", type=int, default=8, help="generate() steps timed (0: skip)")
    ap.add_argument("--profile", action="store_true", help="kernel time by class per step, every variant")
    ap.add_argument("--cpu", action="store_true", help="smoke run on the CPU (TRITON_INTERPRET=1 for the kernel)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: '{unknown[0]}' is not one of {list(VARIANTS)}")

    from r1v.model.parts.qwen2 import PRESETS, qwen2

    dev = torch.device("cpu" if args.cpu else "cuda")
    torch.manual_seed(0)
    with torch.device(dev):
        lm = qwen2(SHAPES[args.shape], dtype="bfloat16", num_hidden_layers=args.layers).model.eval()
    lm.generation_config.eos_token_id = None
    depth = PRESETS[SHAPES[args.shape]].config["num_hidden_layers"]
    bw = read_bandwidth(dev) if dev.type == "cuda" else 50e9
    torch.cuda.empty_cache()
    res: dict[str, Any] = {
        "card": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "commit": os.environ.get("R1V_COMMIT"),
        "command": "python " + " ".join(sys.argv), "shape": SHAPES[args.shape],
        "layers": lm.config.num_hidden_layers, "of_layers": depth, "prompt": list(args.prompt), "new": args.new,
        "sampling": "greedy" if args.greedy else "T 0.6 / top-p 0.95", "read_bandwidth_GBps": bw / 1e9, "runs": [],
    }  # fmt: skip
    print(f"{res['card']}: {res['shape']} ({res['layers']} of {depth} layers), read bandwidth {bw / 1e9:.0f} GB/s")
    with torch.no_grad():
        for batch in args.batch:
            ids, mask = prompts(batch, *args.prompt, lm.config.vocab_size, dev)
            real = mask.sum(1).float()
            filled = float(real.mean()) + (args.new - 1) / 2  # mean filled columns over the decode steps
            floor = step_floor(lm, filled, batch, bw)
            run: dict[str, Any] = {"batch": batch, "prompt_mean": float(real.mean()), "floor": floor, "rows": []}
            if args.hf_steps:
                ms = hf_step_ms(lm, ids, mask, args.hf_steps, args.greedy)
                run["generate_ms_per_step"] = ms
                gc.collect()
                torch.cuda.empty_cache()
            for name in args.variants:
                row = measure(name, lm, ids, mask, args, floor, bw, depth, run.get("generate_ms_per_step"))
                gc.collect()  # the variant's cache, graphs and fused copies go before the next is built
                torch.cuda.empty_cache()
                run["rows"].append(row)
                show(row, batch, floor, res["layers"])
            if args.hf_steps:
                print(f"  B={batch:3d} transformers generate(): {run['generate_ms_per_step']:.1f} ms/step")
            res["runs"].append(run)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))


def measure(name: str, lm: Any, ids: torch.Tensor, mask: torch.Tensor, args: argparse.Namespace,
            floor: dict[str, float], bw: float, depth: int,
            generate_ms: float | None) -> dict[str, Any]:  # fmt: skip
    """Build variant ``name``, warm it, time its decode (prefill taken off), free it; one result row."""
    from r1v.generation import StaticEngine

    batch, dev = ids.shape[0], ids.device
    engine = StaticEngine(0.6, 0.95, compile=True, fuse=bool(args.fuse), **VARIANTS[name])
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    warm = args.new if VARIANTS[name].get("attention") == "sdpa" else min(args.new, 64)
    decode(engine, lm, ids, mask, warm, args.greedy)
    first = time.perf_counter() - t0
    prefill = timed(lambda: decode(engine, lm, ids, mask, 1, args.greedy))
    compiled_before = dynamo_graphs()
    total = timed(lambda: decode(engine, lm, ids, mask, args.new, args.greedy))
    ms = (total - prefill) / (args.new - 1) * 1e3
    diagnosis = {"dynamo_graphs_compiled_while_timed": dynamo_graphs() - compiled_before,
                 **replay_only(engine, lm, ids, mask, args)}  # fmt: skip
    row: dict[str, Any] = {
        "engine": name, "knobs": VARIANTS[name], "ms_per_step": ms, "tokens_per_s": batch / ms * 1e3,
        "share_of_floor": floor["ms_per_step"] / ms, "prefill_s": prefill, "warm_up_s": first,
        "fused_layers": len(engine._decoder.fused),
        "peak_GB": torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else 0.0, **diagnosis,
    }  # fmt: skip
    if generate_ms:
        row["generate_ms_per_step"], row["vs_generate"] = generate_ms, generate_ms / ms
    prompt_mean = float(mask.sum(1).float().mean())
    if args.segments:
        part = timed(lambda: decode(engine, lm, ids, mask, args.segments, args.greedy))
        n = args.segments
        row["segments"] = {
            f"steps 1-{n}": {"ms_per_step": (part - prefill) / (n - 1) * 1e3,
                             "floor_ms": step_floor(lm, prompt_mean + n / 2, batch, bw)["ms_per_step"]},
            f"steps {n}-{args.new}": {"ms_per_step": (total - part) / (args.new - n) * 1e3,
                                      "floor_ms": step_floor(lm, prompt_mean + (n + args.new) / 2, batch,
                                                             bw)["ms_per_step"]},
        }  # fmt: skip
    if args.profile:
        row["kernel_us_per_step"] = profile(engine, lm, ids, mask, args.greedy)
    if lm.config.num_hidden_layers < depth:  # the full depth, by the floors' ratio (the layers dominate the step)
        full = step_floor_scaled(lm, prompt_mean + (args.new - 1) / 2, batch, bw, depth)
        scaled = ms * full / floor["ms_per_step"]
        row["full_depth_estimate"] = {"layers": depth, "ms_per_step": scaled, "tokens_per_s": batch / scaled * 1e3,
                                      "floor_ms": full}  # fmt: skip
    return row


def dynamo_graphs() -> int:
    """Graphs torch.compile has compiled so far in this process (a rise while timing = a recompile per call)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def replay_only(engine: Any, lm: Any, ids: torch.Tensor, mask: torch.Tensor, args: argparse.Namespace) -> dict:
    """The captured decode step replayed alone, ``n`` times right after a prefill (no Python decode loop): against
    the loop's ms per step it splits a slow step into graph time and host time. One graph (the split-K kernel's)
    only; the SDPA path has a graph per window."""
    st = getattr(engine, "_state", None)
    if ids.device.type != "cuda" or st is None or len(st.graphs) != 1:
        return {}
    decode(engine, lm, ids, mask, 1, args.greedy)  # state at the first decode step, room for args.new more
    graph, n = next(iter(st.graphs.values())), max(1, min(32, args.new - 2))
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        graph.replay()
    torch.cuda.synchronize()
    return {"replay_only_ms_per_step": (time.perf_counter() - start) / n * 1e3, "graphs": len(st.graphs)}


def show(row: dict[str, Any], batch: int, floor: dict[str, float], layers: int) -> None:
    gen = f"  {row['vs_generate']:5.1f}x generate()" if "vs_generate" in row else ""
    print(f"  B={batch:3d} {row['engine']:46s} {row['ms_per_step']:7.2f} ms/step {row['tokens_per_s']:9.0f} tok/s "
          f"{100 * row['share_of_floor']:5.1f}% of floor ({floor['ms_per_step']:.2f} ms){gen}  fused "
          f"{row['fused_layers']}/{layers}, peak {row['peak_GB']:.1f} GB", flush=True)  # fmt: skip
    if "replay_only_ms_per_step" in row:
        print(f"      graph replayed alone {row['replay_only_ms_per_step']:.2f} ms/step; dynamo graphs compiled while "
              f"timed: {row['dynamo_graphs_compiled_while_timed']}")  # fmt: skip
    for seg, v in row.get("segments", {}).items():
        print(f"      {seg}: {v['ms_per_step']:.2f} ms/step (floor {v['floor_ms']:.2f})")
    if "kernel_us_per_step" in row:
        print("      kernel µs per step:", json.dumps({k: round(v) for k, v in row["kernel_us_per_step"].items()}))
    if "full_depth_estimate" in row:
        e = row["full_depth_estimate"]
        print(
            f"      at {e['layers']} layers (scaled by the floors' ratio): {e['ms_per_step']:.2f} ms/step, "
            f"{e['tokens_per_s']:.0f} tok/s (floor {e['floor_ms']:.2f} ms)"
        )


def step_floor_scaled(lm: Any, filled: float, batch: int, bw: float, depth: int) -> float:
    """The floor (ms) of the same step with ``depth`` layers: each layer's weights and K/V scaled up."""
    cfg = lm.config
    n = cfg.num_hidden_layers
    per_layer = sum(p.numel() * p.element_size() for p in lm.model.layers[0].parameters())
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_layer = batch * filled * 2 * cfg.num_key_value_heads * hd * 2
    now = step_floor(lm, filled, batch, bw)
    extra = (depth - n) * (per_layer + kv_layer)
    return (now["weight_bytes"] + now["kv_bytes"] + extra) / bw * 1e3


def profile(engine: Any, lm: Any, ids: torch.Tensor, mask: torch.Tensor, greedy: bool, steps: int = 16) -> dict:
    """Kernel µs per graph-replayed decode step by class: (prefill + 1 + steps) − (prefill + 1)."""
    a = classes_of(lambda: decode(engine, lm, ids, mask, 2, greedy))
    b = classes_of(lambda: decode(engine, lm, ids, mask, 2 + steps, greedy))
    out = {k: (b[k] - a.get(k, 0.0)) / steps for k in sorted(b)}
    out["total"] = sum(out.values())
    return out


if __name__ == "__main__":
    main()

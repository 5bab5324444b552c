"""Rollout throughput: rollout=static against transformers' generate() in the same process, with the floor.

Setting (issue 8): Qwen2.5-1.5B shapes (random weights, bf16), batch 64, left-padded prompts of 192–256
tokens, 512 sampled tokens (temperature 0.6, top-p 0.95); EOS never stops a row, so every engine makes
B × new tokens. The baseline decodes fewer tokens (``--hf-new``, its per-step cost barely depends on the
step) and ours runs the same short setting too, for an equal-work ratio.

The floor: one decode step must read every weight once and the whole KV cache written so far; at the
HBM read bandwidth measured here (a large bf16 ``sum``) that gives ms/step and tokens/s.

Greedy agreement: both engines decode the same prompts greedily; reported as the share of positions
before the first difference, and at each first difference the reference's own top-1 − chosen logit gap
(a gap at bf16 rounding level is a tie broken differently, not a wrong token).

Gap analysis (``--profile``): one eager decode step under torch.profiler, kernel time by class
(GEMM, attention, sampling, other) against the graph-replayed step time.

    python benchmarks/rollout_engine.py --out results/rollout_engine_h200.json      (GPU)
    python benchmarks/rollout_engine.py --preset qwen2_5_0_5b --batch 4 --new 16 --hf-new 16 --cpu   (smoke)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import kernel_class  # run as a script from benchmarks/


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Any) -> tuple[Any, float]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def read_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large bf16 reduction (the achievable HBM read rate)."""
    if device.type != "cuda":
        return float("nan")
    x = torch.empty(2 * 1024**3, dtype=torch.bfloat16, device=device).normal_()
    x.sum()
    _, t = timed(lambda: [x.sum() for _ in range(10)])
    return 10 * 4 * 1024**3 / t


def prompts(batch: int, lo: int, hi: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(lo, hi + 1, (batch,), generator=g)
    width = int(lengths.max())
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        ids[b, width - n :] = torch.randint(100, vocab, (n,), generator=g)
        mask[b, width - n :] = 1
    return ids.to(device), mask.to(device)


def hf_generate(lm: Any, ids: torch.Tensor, mask: torch.Tensor, new: int, greedy: bool, **kw: Any) -> Any:
    sampling = {} if greedy else {"temperature": 0.6, "top_p": 0.95, "top_k": None}
    return lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=not greedy,
                       pad_token_id=0, eos_token_id=None, **sampling, **kw)  # fmt: skip


def ours(engine: Any, lm: Any, ids: torch.Tensor, mask: torch.Tensor, new: int, greedy: bool,
         penalty: list[float] | None = None, temperature: float = 0.6,
         top_p: float = 0.95) -> list[list[int]]:  # fmt: skip
    b = ids.shape[0]
    knobs = {"temperature": [temperature] * b, "top_p": [top_p] * b, "repetition_penalty": penalty or [1.0] * b}
    return engine.decode(lm, lm.model.embed_tokens(ids), mask, new, greedy, knobs, eos=None, pad=0)


def floor(lm: Any, batch: int, prompt_mean: float, new: int, bandwidth: float) -> dict[str, float]:
    cfg = lm.config
    weights = sum(p.numel() * p.element_size() for p in lm.parameters())
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * hd * 2  # K and V, bf16
    mean_ctx = prompt_mean + new / 2
    step_bytes = weights + batch * mean_ctx * kv_per_token
    ms = step_bytes / bandwidth * 1e3
    return {"weight_bytes": weights, "kv_bytes_mean": batch * mean_ctx * kv_per_token, "ms_per_step": ms,
            "tokens_per_s": batch / ms * 1e3}  # fmt: skip


def agreement(ref: torch.Tensor, mine: list[list[int]], scores: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """ref (B, new) greedy ids of the baseline, scores[t] (B, V) its logits at step t."""
    prefix, gaps, identical = [], [], 0
    for b, row in enumerate(mine):
        r = ref[b].tolist()
        k = next((i for i, (x, y) in enumerate(zip(r, row, strict=False)) if x != y), len(r))
        prefix.append(k / len(r))
        identical += k == len(r)
        if k < len(r):
            s = scores[k][b].float()
            gaps.append(float(s.max() - s[row[k]]))
    return {"rows_identical": identical / len(mine), "mean_share_before_first_difference": sum(prefix) / len(prefix),
            "logit_gap_at_first_difference": sorted(gaps)}  # fmt: skip


def kernel_classes(engine: Any, lm: Any, ids: torch.Tensor, mask: torch.Tensor, new: int) -> dict[str, float]:
    """Total kernel µs by class for one eager ``decode`` of ``new`` tokens."""
    return classes_of(lambda: ours(engine, lm, ids, mask, new, False))


def classes_of(fn: Any) -> dict[str, float]:
    """Total kernel µs by class (GEMM, attention, sampling, other) of the CUDA kernels ``fn()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
    classes: dict[str, float] = {}
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        cls = kernel_class(e.key, "other (norms, rotary, elementwise, copies)")
        cls = {"softmax / loss": "sampling", "norm": "other (norms, rotary, elementwise, copies)"}.get(cls, cls)
        classes[cls] = classes.get(cls, 0.0) + us
    return classes


def profile_step(engine: Any, lm: Any, ids: torch.Tensor, mask: torch.Tensor, steps: int = 16) -> dict[str, float]:
    """Kernel µs per decode step by class: (prefill + ``steps`` steps) − (prefill + 0 steps)."""
    ours(engine, lm, ids, mask, steps + 1, False)  # graphs captured before profiling
    a = kernel_classes(engine, lm, ids, mask, 1)
    b = kernel_classes(engine, lm, ids, mask, steps + 1)
    out = {k: (b[k] - a.get(k, 0.0)) / steps for k in sorted(b)}
    out["total"] = sum(out.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="qwen2_5_1_5b")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt", type=int, nargs=2, default=(192, 256))
    ap.add_argument("--new", type=int, default=512)
    ap.add_argument("--hf-new", type=int, default=64)
    ap.add_argument("--greedy-new", type=int, default=128)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time compile=true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--fp32-agreement", action="store_true", help="also compare greedy ids in float32")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from r1v.generation import StaticEngine
    from r1v.model.parts.qwen2 import qwen2

    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    torch.manual_seed(0)
    with torch.device(device):
        lm = qwen2(args.preset, dtype="bfloat16").model.eval()
    lm.generation_config.eos_token_id = None
    ids, mask = prompts(args.batch, *args.prompt, lm.config.vocab_size, device)
    bw = read_bandwidth(device)
    res: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                           "torch": torch.__version__, "preset": args.preset, "batch": args.batch,
                           "prompt": list(args.prompt), "new": args.new, "read_bandwidth_GBps": bw / 1e9}  # fmt: skip
    rows = []

    def add(name: str, new: int, seconds: float, first: float | None = None) -> None:
        rows.append({"engine": name, "new": new, "tokens_per_s": args.batch * new / seconds,
                     "ms_per_step": seconds / new * 1e3, "first_call_s": first})  # fmt: skip

    with torch.no_grad():
        hf_generate(lm, ids[:, -32:], mask[:, -32:], 4, False)  # warm-up
        _, t = timed(lambda: hf_generate(lm, ids, mask, args.hf_new, False))
        add("transformers generate (baseline)", args.hf_new, t)
        variants = [("static, eager (no graphs)", StaticEngine(0.6, 0.95, cuda_graphs=False, top_p_method="sort"),
                 args.hf_new)]  # fmt: skip
        sort = {"top_p_method": "sort"}
        variants.append(("static, CUDA graphs", StaticEngine(0.6, 0.95, **sort), args.new))
        variants.append(("static, CUDA graphs + fused q|k|v, gate|up GEMMs", StaticEngine(0.6, 0.95, fuse=True, **sort),
                         args.new))  # fmt: skip
        if args.compile:
            variants.append(("static, CUDA graphs + compile", StaticEngine(0.6, 0.95, compile=True, **sort), args.new))
            variants.append(("static, CUDA graphs + compile + fused", StaticEngine(0.6, 0.95, compile=True, fuse=True,
                                                                               **sort), args.new))  # fmt: skip
            from r1v.generation.sampling import triton_available

            method = "triton" if triton_available() else "bisect"  # the one-launch kernel (opt-in), else bisection
            best = StaticEngine(0.6, 0.95, compile=True, fuse=True, top_p_method=method)
            variants.append((f"static, CUDA graphs + compile + fused + top-p by {method}", best, args.new))
        for name, engine, new in variants:
            _, first = timed(lambda e=engine, n=new: ours(e, lm, ids, mask, n, False))
            _, t = timed(lambda e=engine, n=new: ours(e, lm, ids, mask, n, False))
            add(name, new, t, first)
        best_name, best = variants[-1][0], variants[-1][1]
        _, t = timed(lambda: ours(best, lm, ids, mask, args.hf_new, False))
        add(best_name + f" ({args.hf_new} new: equal work)", args.hf_new, t)
        drlc = [1.0 + (b % 8) / 8 for b in range(args.batch)]  # per-row penalties 1.0 … 1.875
        for label, greedy, kw in ((", per-row repetition penalty", False, {"penalty": drlc}),
                                  (", T = 1, top-p = 1 (GRPO default: no sort)", False,
                                   {"temperature": 1.0, "top_p": 1.0}),
                                  (", greedy", True, {})):  # fmt: skip
            ours(best, lm, ids, mask, args.new, greedy, **kw)  # first use of this sampling mode captures
            _, t = timed(lambda g=greedy, kw=kw: ours(best, lm, ids, mask, args.new, g, **kw))
            add(best_name + label, args.new, t)

        ref = hf_generate(lm, ids, mask, args.greedy_new, True, output_scores=True, return_dict_in_generate=True)
        mine = ours(best, lm, ids, mask, args.greedy_new, True)
        res["greedy_agreement"] = agreement(ref.sequences[:, ids.shape[1] :], mine, ref.scores)
        if args.fp32_agreement:  # ties are rare in fp32: the same decode loop must then give the same tokens
            lm.float()
            ref = hf_generate(lm, ids, mask, args.greedy_new, True, output_scores=True, return_dict_in_generate=True)
            mine = ours(StaticEngine(cuda_graphs=device.type == "cuda"), lm, ids, mask, args.greedy_new, True)
            res["greedy_agreement_fp32"] = agreement(ref.sequences[:, ids.shape[1] :], mine, ref.scores)
            lm.bfloat16()
        if args.profile and device.type == "cuda":
            eager = StaticEngine(0.6, 0.95, cuda_graphs=False, fuse=True)
            res["eager_kernel_us_per_step"] = profile_step(eager, lm, ids, mask)
            res["graph_kernel_us_per_step"] = profile_step(best, lm, ids, mask)

    res["floor"] = floor(lm, args.batch, float(mask.sum(1).float().mean()), args.new, bw)
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["vs_baseline"] = r["tokens_per_s"] / base
        r["share_of_floor"] = r["tokens_per_s"] / res["floor"]["tokens_per_s"]
    res["rows"] = rows
    print(f"{'engine':84s} {'new':>5s} {'tok/s':>9s} {'ms/step':>8s} {'× baseline':>10s} {'% floor':>8s}")
    for r in rows:
        print(f"{r['engine']:84s} {r['new']:5d} {r['tokens_per_s']:9.0f} {r['ms_per_step']:8.2f} "
              f"{r['vs_baseline']:10.1f} {100 * r['share_of_floor']:7.1f}%")  # fmt: skip
    f = res["floor"]
    print(f"{'floor (weights + mean KV read once per step)':84s} {args.new:5d} {f['tokens_per_s']:9.0f} "
          f"{f['ms_per_step']:8.2f}   at {bw / 1e9:.0f} GB/s measured read bandwidth")  # fmt: skip
    for key in ("greedy_agreement", "greedy_agreement_fp32"):
        if key in res:
            print(key, json.dumps({k: v if not isinstance(v, list) else v[-8:] for k, v in res[key].items()}))
    for key in ("eager_kernel_us_per_step", "graph_kernel_us_per_step"):
        if key in res:
            print(key, json.dumps({k: round(v, 1) for k, v in res[key].items()}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""The Triton top-p sampler's single-program kernel against its split path, side by side (one GPU, seconds).

    python benchmarks/topp_kernel.py --out results/topp_kernel_<card>.json      (one GPU, ≈ 20 s)
    python benchmarks/topp_kernel.py --sweep                                    (+ the split path's loop steps, ≈ 1 min)
    python benchmarks/topp_kernel.py --cpu                                      (interpreter smoke run, small V)

At B = 64, V = 151,936 (Qwen's vocabulary) times ``split=False`` (:mod:`r1v.generation.triton_topp`: one
program per row, sequential passes) and ``split=True`` (:mod:`r1v.generation.triton_topp_split`: parallel
pre-pass and draw, four-way search passes) on the same logits and noise, per case:

- ``broad``: a random-weights model's logits, N(0, 0.78²), at T = 0.6 (scaled s ≈ N(0, 1.3²)): the search
  needs several passes over the row before its candidates fit;
- ``peaked``: Zipf-like rows (``−1.1·log rank`` in a random order plus N(0, 0.3²)) at T = 1: a sparse top;

µs per call launched eagerly and replayed from a CUDA graph (what the engine's decode step does), their
ratio, the mean sequential full-row passes of each path, and whether tokens and thresholds agree. ``--sweep``
adds, per case, the split path's µs (from a CUDA graph) over its loop steps and warps (``SWEEP``): the
defaults in triton_topp_split.py were chosen without a GPU at hand.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit


def _logits(kind: str, b: int, v: int, device: str, seed: int = 0) -> torch.Tensor:
    """(b, v) float32 logits of a ``broad`` or ``peaked`` case (see the module docstring)."""
    g = torch.Generator(device=device).manual_seed(seed)
    if kind == "broad":
        return torch.randn(b, v, device=device, generator=g) * 0.78
    ranks = torch.rand(b, v, device=device, generator=g).argsort(-1).float() + 1  # a random order per row
    return -1.1 * ranks.log() + 0.3 * torch.randn(b, v, device=device, generator=g)


def _us(fn, n: int, graph: bool) -> float:
    """µs per call of ``fn``: ``n`` eager calls, or ``n`` calls captured once in a CUDA graph and replayed."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    run = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(n):
                fn()
        run, n_calls = g.replay, 1
    else:
        n_calls = n
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 5
    start.record()
    for _ in range(reps):
        for _ in range(n_calls):
            run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (reps * n)


def _timings(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, noise: torch.Tensor,
             n: int) -> dict[str, float]:  # fmt: skip
    """µs per call of each path, eager and from a CUDA graph, and old / new."""
    from r1v.generation import triton_topp, triton_topp_split

    out: dict[str, float] = {}
    for graph in (False, True):
        tag = "graph" if graph else "eager"
        out[f"old_us_{tag}"] = _us(lambda: triton_topp.top_p_sample(logits, temperature, top_p, noise), n, graph)
        out[f"new_us_{tag}"] = _us(lambda: triton_topp_split.top_p_sample(logits, temperature, top_p, noise), n, graph)
        out[f"ratio_{tag}"] = out[f"old_us_{tag}"] / out[f"new_us_{tag}"]
    return out


# the split path's knobs swept by --sweep, each setting over the defaults: ways x search step x warps, then the
# parallel passes' chunks and step, then the register phase's candidates
# (WAYS x step above 16384 spills registers at 16 warps: left out)
SWEEP = [{"ways": w, "search_block": sb, "num_warps": nw} for w in (2, 4, 8, 16) for sb in (1024, 2048, 4096)
         for nw in (8, 16) if w * sb <= 16384]  # fmt: skip
SWEEP += [{"chunks": ch, "part_block": pb} for ch in (4, 8, 16) for pb in (1024, 2048, 4096)]
SWEEP += [{"cap": cap} for cap in (4096, 16384)]


def _sweep(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, noise: torch.Tensor,
           n: int) -> dict[str, float]:  # fmt: skip
    """µs per call (CUDA graph) of the split path for each setting of ``SWEEP``."""
    from r1v.generation.triton_topp_split import _launch_split

    out: dict[str, float] = {}
    for kw in SWEEP:
        name = " ".join(f"{k}={v}" for k, v in kw.items())
        out[name] = _us(lambda kw=kw: _launch_split(logits, temperature, top_p, noise, **kw), n, True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--cpu", action="store_true", help="smoke run under TRITON_INTERPRET=1 with small V")
    ap.add_argument("--n", type=int, default=20, help="calls per timing")
    ap.add_argument("--sweep", action="store_true", help="also time the split path over SWEEP's settings")
    args = ap.parse_args()
    if args.cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # read when triton is first imported, below
    from r1v.generation import triton_topp, triton_topp_split

    device = "cpu" if args.cpu else "cuda"
    b, v = (4, 8192) if args.cpu else (64, 151_936)
    kw: dict[str, Any] = {"block": 1024, "cap": 64} if args.cpu else {}  # a small cap: passes as at full V
    cases = (("broad", 0.6, 0.95), ("broad", 0.6, 0.9), ("peaked", 1.0, 0.95), ("peaked", 1.0, 0.9))
    result: dict[str, Any] = {"B": b, "V": v, "device": torch.cuda.get_device_name() if not args.cpu else "cpu"}
    for kind, t, p in cases:
        logits = _logits(kind, b, v, device)
        temperature, top_p = torch.full((b,), t, device=device), torch.full((b,), p, device=device)
        noise = torch.empty_like(logits).exponential_()
        old = triton_topp._launch(logits, temperature, top_p, noise, **kw)
        ext = {"search_block": 1024, "part_block": 1024} if args.cpu else {}
        new = triton_topp_split._launch_split(logits, temperature, top_p, noise, **kw, **ext)
        row: dict[str, Any] = {
            "passes_old": float(old[2][:, 0].float().mean()),
            "passes_new": float(new[2][:, 0].float().mean()),
            "same_tokens": int((old[0] == new[0]).sum()),
            "same_thresholds": int((old[1] == new[1]).sum()),
        }
        if not args.cpu:
            row.update(_timings(logits, temperature, top_p, noise, args.n))
            if args.sweep:
                row["sweep_us"] = _sweep(logits, temperature, top_p, noise, args.n)
        name = f"{kind} T={t} p={p}"
        result[name] = row
        times = ", ".join(f"{k} {row[k]:.2f}" for k in row if "_us_" in k or k.startswith("ratio"))
        print(f"{name}: passes {row['passes_old']:.1f} -> {row['passes_new']:.1f}, same tokens "
              f"{row['same_tokens']}/{b}, thresholds {row['same_thresholds']}/{b}" + (f"; {times}" if times else ""),
              file=sys.stderr)  # fmt: skip
    emit(result, args.out)


if __name__ == "__main__":
    main()

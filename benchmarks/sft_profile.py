"""Where an SFT step's time goes, without Lightning or DeepSpeed: the model's forward + backward on one packed
batch (the same JSONL and collator as ``sft_throughput.py``), then AdamW, each timed with CUDA events, and a
profiler table of the top kernels. Against ``sft_throughput.py``'s per-batch time this separates the model's
own compute from the framework around it (data loading, DeepSpeed's gradient buckets, logging).

    python benchmarks/sft_profile.py [--data <dir with train.jsonl>] [--backbone qwen2_5_1_5b] [--batch 4]

The loss is the SFT stage's own (``stage.loss_chunk_tokens``, default 4,096: the LM head on answer tokens only).
The last table sums one profiled step's kernels by class (GEMM, attention, norms, …) against the GEMM floor:
the step's model FLOPs at the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="default: sft_throughput.py's data (200–8000 tokens) in a temp folder")
    ap.add_argument("--chunk", type=int, default=4096, help="stage.loss_chunk_tokens (0: transformers' loss)")
    ap.add_argument("--backbone", default="qwen2_5_1_5b")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--train", default="full", choices=["full", "adapter"])
    ap.add_argument("--ckpt", action="store_true")
    args = ap.parse_args()

    from _common import kernel_class  # run as a script from benchmarks/
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from r1v.core.config import register_resolvers

    register_resolvers()
    from r1v.core.config import conf_dir, register_plugin_configs
    from r1v.core.registry import get_registry
    from r1v.data.collate import Collator
    from r1v.data.datasets import JsonlDataset
    from r1v.model import varlen
    from r1v.model.build import apply_freeze, build
    from r1v.runtime.perf import FlopCounter, peak_flops
    from r1v.stages.base import enable_checkpointing
    from r1v.stages.sft import SFTStage

    register_plugin_configs(get_registry())
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=["model=r1v_small", f"backbone={args.backbone}"]),
                                     resolve=True)  # fmt: skip
    model, proc = build(cfg["model"], get_registry())
    model = model.to("cuda", torch.bfloat16)
    apply_freeze(model, ["vision", "adapter", "backbone"] if args.train == "full" else ["adapter"])
    if args.ckpt:
        enable_checkpointing(model, ["backbone"])
    varlen.register()
    model.backbone.config._attn_implementation = varlen.NAME
    model.train()
    if args.data is None:
        import tempfile

        from sft_throughput import write_data  # run as a script from benchmarks/

        args.data = Path(tempfile.mkdtemp())
        write_data(args.data, 64, 0)
    ds = JsonlDataset(args.data / "train.jsonl")
    collate = Collator(proc, "reasoning", pack_max_tokens=1, attn=varlen.NAME)
    t = time.perf_counter()
    batches = [collate([ds[i * args.batch + j] for j in range(args.batch)]) for i in range(6)]
    print(f"collate: {(time.perf_counter() - t) / 6 * 1e3:.1f} ms per batch of {args.batch} (CPU, one process)")
    flops = FlopCounter(model)
    head_tokens = (lambda b: int((b["labels"][:, 1:] != -100).sum())) if args.chunk else (lambda b: None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)

    stage = SimpleNamespace(model=model, stage={"loss_chunk_tokens": args.chunk})  # SFTStage.loss reads these

    def step(b: dict) -> None:
        b = {k: (v.cuda(non_blocking=True) if torch.is_tensor(v) else v) for k, v in b.items()}
        b["attn_kwargs"] = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in b["attn_kwargs"].items()}
        SFTStage.loss(stage, b).backward()

    for b in batches[:2]:  # warm-up
        step(b)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    total_fb = total_opt = total_flops = 0.0
    for b in batches[2:]:
        ev[0].record()
        step(b)
        ev[1].record()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ev[2].record()
        torch.cuda.synchronize()
        total_fb += ev[0].elapsed_time(ev[1]) / 1e3
        total_opt += ev[1].elapsed_time(ev[2]) / 1e3
        tiles = 0 if b["pixel_values"] is None else int(b["pixel_values"].shape[0])
        total_flops += flops.step(b["lengths"], tiles, head_tokens(b))
    tokens = sum(sum(b["lengths"]) for b in batches[2:])
    peak = peak_flops() or float("nan")
    print(
        f"forward+backward: {total_fb / 4 * 1e3:.1f} ms/batch, {tokens / total_fb:.0f} tokens/s, "
        f"{total_flops / total_fb / 1e12:.1f} TFLOP/s, MFU {total_flops / total_fb / peak:.3f}"
    )
    print(
        f"AdamW (fused): {total_opt / 4 * 1e3:.1f} ms/step; "
        f"with it MFU {total_flops / (total_fb + total_opt) / peak:.3f}"
    )
    print(f"peak allocated {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step(batches[2])
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
    classes: dict[str, float] = {}
    for e in prof.key_averages():  # µs per class over the step's kernels
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        cls = kernel_class(e.key, "other (elementwise, rotary, copies, casts)")
        classes[cls] = classes.get(cls, 0.0) + us
    b = batches[2]
    floor = flops.step(b["lengths"], int(b["pixel_values"].shape[0]), head_tokens(b)) / peak * 1e3
    total = sum(classes.values()) / 1e3
    print(
        f"kernel time by class, one step of {sum(b['lengths'])} tokens (forward + backward + AdamW): "
        f"{total:.1f} ms; GEMM floor (model FLOPs at peak) {floor:.1f} ms"
    )
    for cls, us in sorted(classes.items(), key=lambda kv: -kv[1]):
        print(f"  {cls:45s} {us / 1e3:8.1f} ms  {us / 1e3 / total:6.1%}")


if __name__ == "__main__":
    main()

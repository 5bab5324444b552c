"""Where an SFT step's time goes, without Lightning or DeepSpeed: the model's forward + backward on one packed
batch (the same JSONL and collator as ``sft_throughput.py``), then AdamW, each timed with CUDA events, and a
profiler table of the top kernels. Against ``sft_throughput.py``'s per-batch time this separates the model's
own compute from the framework around it (data loading, DeepSpeed's gradient buckets, logging).

    python benchmarks/sft_profile.py --data <dir with train.jsonl> [--backbone qwen2_5_1_5b] [--batch 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--backbone", default="qwen2_5_1_5b")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--train", default="full", choices=["full", "adapter"])
    ap.add_argument("--ckpt", action="store_true")
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import r1v.train  # noqa: F401
    from r1v.config import conf_dir, register_plugin_configs
    from r1v.data.datasets import JsonlDataset
    from r1v.model import varlen
    from r1v.model.build import apply_freeze, build
    from r1v.perf import FlopCounter, peak_flops
    from r1v.registry import get_registry
    from r1v.stages.sft import Collator, enable_checkpointing

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
    ds = JsonlDataset(args.data / "train.jsonl")
    collate = Collator(proc, "reasoning", pack_max_tokens=1, attn=varlen.NAME)
    t = time.perf_counter()
    batches = [collate([ds[i * args.batch + j] for j in range(args.batch)]) for i in range(6)]
    print(f"collate: {(time.perf_counter() - t) / 6 * 1e3:.1f} ms per batch of {args.batch} (CPU, one process)")
    flops = FlopCounter(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)

    def step(b: dict) -> None:
        b = {k: (v.cuda(non_blocking=True) if torch.is_tensor(v) else v) for k, v in b.items()}
        kw = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in b["attn_kwargs"].items()}
        out = model(b["input_ids"], b["attention_mask"], b["pixel_values"], b["labels"], position_ids=b["position_ids"],
                    **kw)  # fmt: skip
        out.loss.backward()

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
        total_flops += flops.step(b["lengths"], tiles)
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
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))


if __name__ == "__main__":
    main()

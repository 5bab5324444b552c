"""LoRA GRPO on one GPU (issue 25's GPU evidence): peak memory against the memory planner's prediction, and step
time against the projector-only R1V setting and whole-model training (where the planner says it fits).

Each run is ``python -m r1v.train stage=grpo trainer=gpu`` on random weights of ``model=r1v_small`` with the
named backbone (``qwen2_5_7b``: Qwen2.5-7B shapes), the bundled synthetic data, rollout=static, activation
checkpointing on the backbone, β = 0.04 (LoRA: the base with LoRA off is the reference; the others keep a copy
of what trains). The planner is asked about the same composition with the run's real prompt length and tiles.

    python benchmarks/gpu_lora_grpo.py --out results/lora_grpo_gpu.json                  (7B: lora, projector)
    python benchmarks/gpu_lora_grpo.py --backbone qwen2_5_1_5b --runs lora projector whole
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = {  # name -> the stage overrides that make it
    "lora": ["stage.lora={r: 64, alpha: 128, dropout: 0.05, targets: [backbone]}"],
    "projector": [],  # R1V: stage.trainable=[adapter]
    "whole": ["stage.trainable=[adapter,backbone]"],
}


def prompt_shape(overrides: list[str], n: int) -> tuple[float, int]:
    """Mean prompt tokens (image tokens included) and tiles per prompt of the first n synthetic training prompts."""
    from r1v import create_model
    from r1v.data.synthetic import generate

    processor = create_model(None, *overrides, device="meta").processor
    lengths, tiles = [], []
    for i in range(n):
        enc = processor.encode(generate(i, "train")[0], target=None)
        lengths.append(len(enc["input_ids"]))
        tiles.append(0 if enc.get("pixel_values") is None else int(enc["pixel_values"].shape[0]))
    return sum(lengths) / n, round(sum(tiles) / n)


def plan(overrides: list[str], knobs: dict[str, object]) -> dict[str, object]:
    """The planner's per-GPU total (GiB; what must fit), its verdict line, and rollout=static's fused weight copies
    (made only from free memory, so apart from the total): the measured peak should be near total + fused, less
    the planner's allowance for the CUDA context and slack, which PyTorch's allocator statistics do not see."""
    from r1v.cli.describe import inspect

    lines = inspect([*overrides, *(f"planner.{k}={v}" for k, v in knobs.items())])
    total = next(line for line in lines if line.strip().startswith("total") and "GiB" in line)
    fused = next((line for line in lines if line.strip().startswith("+ fused")), "")
    other = next(line for line in lines if line.strip().startswith("other") and "GiB" in line)
    gib = lambda line: float(re.search(r"([\d.]+) GiB", line).group(1)) if line else 0.0  # noqa: E731
    return {
        "planned_gib": gib(total),
        "planned_fused_gib": gib(fused),
        "planned_other_gib": gib(other),
        "expected_peak_gib": gib(total) + gib(fused) - gib(other),
        "fits": "does NOT fit" not in total,
        "plan": "\n".join(lines),
    }


def run(name: str, args: list[str], work: Path) -> dict[str, float]:
    """One training run; its steps after the first (compile and graph capture) averaged, and the peak memory."""
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "r1v.train", *args, f"run={name}", "logger=csv",
                           "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"],
                          cwd=work, env=env, capture_output=True, text=True)  # fmt: skip
    if proc.returncode:
        tail = proc.stderr[-2500:]
        return {"failed": 1.0, "oom": float("OutOfMemoryError" in tail or "out of memory" in tail), "error": tail}
    with open(work / "runs" / name / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    steps = [r for r in rows if r.get("time/rollout_s")]
    later = steps[1:] or steps
    f = lambda r, k: float(r[k]) if r.get(k) else 0.0  # noqa: E731
    mean = lambda k: sum(f(r, k) for r in later) / len(later)  # noqa: E731
    peak = max(f(r, "perf/peak_alloc_gib") for r in rows)
    res = {k.split("/")[1]: mean(k) for k in ("time/rollout_s", "time/reference_s", "time/update_s")}
    res["step_s"] = res["rollout_s"] + res["reference_s"] + res["update_s"]
    res.update(peak_alloc_gib=peak, peak_reserved_gib=max(f(r, "perf/peak_reserved_gib") for r in rows),
               tokens_per_step=mean("completion/length_mean") * len_batch(args), wall_s=time.perf_counter() - start,
               steps_counted=float(len(later)),
               kl_last=max((f(r, "train/kl") for r in rows if r.get("train/kl")), default=0.0))  # fmt: skip
    return res


def len_batch(args: list[str]) -> int:
    """Sequences per step: stage.batch_size × stage.group_size from the overrides."""
    get = lambda k: int(next(a.split("=")[1] for a in args if a.startswith(f"stage.{k}=")))  # noqa: E731
    return get("batch_size") * get("group_size")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="qwen2_5_7b")
    ap.add_argument("--runs", nargs="+", default=["lora", "projector", "whole"], choices=list(RUNS))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4, help="prompts per step")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--micro", type=int, default=4, help="stage.micro_batch_size")
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--force", action="store_true", help="run a composition the planner says does not fit")
    ap.add_argument("--out", type=Path, default=Path("lora_grpo_gpu.json"))
    a = ap.parse_args()

    import torch

    gpu_gb = torch.cuda.get_device_properties(0).total_memory / 1e9 if torch.cuda.is_available() else 80.0
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    model = ["model=r1v_small", f"backbone={a.backbone}"]
    common = [*model, "stage=grpo", "trainer=gpu", f"stage.batch_size={a.batch}", f"stage.group_size={a.group}",
              f"stage.micro_batch_size={a.micro}", f"stage.max_new_tokens={a.max_new}", f"stage.max_steps={a.steps}",
              "stage.policy_loss.beta=0.04", "stage.lr=1e-6", "stage.val_every=1000", "stage.val_generate=0",
              "stage.ckpt_every=0", "stage.rollout.name=static", "stage.rollout.compile=true",
              "stage.rollout.fuse=true", "stage.activation_checkpointing=[backbone]",
              "allow_random_weights=true"]  # fmt: skip
    prompt_len, tiles = prompt_shape(model, a.batch)
    knobs = {"gpus": 1, "gpu_gb": round(gpu_gb, 1), "micro_batch": a.micro, "prompt_len": int(prompt_len),
             "completion_len": a.max_new, "tiles": tiles, "group_size": a.group, "rollout_batch": a.batch * a.group,
             "beta": 0.04, "ckpt": "backbone"}  # fmt: skip
    results: dict[str, object] = {"card": card, "backbone": a.backbone, "prompt_len": prompt_len, "tiles": tiles,
                                  "settings": vars(a) | {"out": str(a.out)}, "runs": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.runs:
            args = [*common, *RUNS[name]]
            p = plan(args, {**knobs, "reference": "trainable"})  # GRPO copies what trains (LoRA: the base, off)
            r: dict[str, object] = dict(p)
            if p["fits"] or a.force:
                r.update(run(name, args, Path(tmp)))
            else:
                r["skipped"] = "the planner says it does not fit"
            results["runs"][name] = r
            print(name, json.dumps({k: v for k, v in r.items() if k not in ("error", "plan")}), flush=True)
            if "error" in r:
                print(r["error"][-1500:], flush=True)
    runs = results["runs"]
    base = runs.get("projector", {}).get("step_s")
    print(
        f"\n{card}, r1v_small + {a.backbone}, {a.batch}×G{a.group}, {a.max_new} new tokens, prompt "
        f"{prompt_len:.0f} tokens ({tiles} tiles)"
    )
    print(
        f"{'run':10s} {'planned GiB':>11s} {'+fused':>6s} {'expected':>8s} {'peak GiB':>8s} {'step s':>7s} "
        f"{'rollout':>7s} {'ref':>5s} {'update':>6s} {'× projector':>11s}"
    )
    for name, r in runs.items():
        head = f"{name:10s} {r['planned_gib']:>11.1f} {r['planned_fused_gib']:>6.1f} {r['expected_peak_gib']:>8.1f}"
        if "step_s" not in r:
            print(f"{head} {'-':>8s}  {r.get('skipped') or 'failed'}")
            continue
        ratio = r["step_s"] / base if base else float("nan")
        print(
            f"{head} {r['peak_alloc_gib']:>8.1f} {r['step_s']:>7.2f} "
            f"{r['rollout_s']:>7.2f} {r['reference_s']:>5.2f} {r['update_s']:>6.2f} {ratio:>11.2f}"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

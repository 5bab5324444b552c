"""SFT throughput on GPUs: padding-free packed batches against padded batches of the same samples, MFU on real
tokens, ZeRO-2/3 scaling from 1 to 2 GPUs, and the measured peak memory against the planner's prediction.

Every run is ``python -m r1v.train stage=sft`` (Lightning + DeepSpeed, as a user runs it) on a JSONL of
multimodal samples whose lengths are log-uniform in 200–8000 tokens (one 448-px image each, a third of them
wide: 2 tiles + thumbnail), with random weights (throughput does not depend on their values). The stage logs,
per batch, real tokens, padded tokens, model FLOPs (``r1v/perf.py``: 6·N·t for trainable parts, 4·N·t for
frozen parts a gradient passes through, 2·N·t for a frozen encoder in front, n² attention per sample) and the
clock, so MFU counts real tokens only and padding is pure loss. The first ``--warmup`` batches are dropped.

    python benchmarks/sft_throughput.py --out $OUT \\
        --run full_padded:qwen2_5_1_5b:1:2:full:padded --run full_packed:qwen2_5_1_5b:1:2:full:packed

A run is ``name:backbone:gpus:zero:train:batching[:ckpt][:key=value…]`` with train ``full`` (every part) or
``adapter`` (R1V), batching ``packed`` or ``padded``, ckpt ``ckpt`` for activation checkpointing of the backbone,
and any further ``r1v.train`` overrides (e.g. ``+trainer.profiler=simple``: Lightning's time per hook).
Prints one table (tokens/s/GPU, TFLOP/s/GPU, MFU, packed ÷ padded, scaling vs the 1-GPU run of the same setting,
peak memory measured and planned) and writes ``sft_throughput.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import QUIET  # run as a script from benchmarks/

MODEL = {"model": "r1v_small", "cpu": False, "extra": []}  # --model / --cpu (a CPU smoke run of the script itself)
LIMIT: dict[str, float | None] = {"s": None}  # --limit: seconds per run
WORDS = [
    "the",
    "red",
    "circle",
    "left",
    "of",
    "two",
    "squares",
    "so",
    "the",
    "count",
    "is",
    "three",
    "then",
    "we",
    "add",
    "area",
    "angle",
    "sum",
    "total",
    "first",
]


def write_data(folder: Path, n: int, seed: int) -> Path:
    """n samples, total length log-uniform in 200–8000 tokens (tiny tokenizer: calibrated below)."""
    from PIL import Image

    from r1v.model.parts.tiny import tokenizer

    tok, rng = tokenizer(), random.Random(seed)
    per_word = len(tok(" ".join(WORDS * 20))["input_ids"]) / (len(WORDS) * 20)
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in (("square.png", (448, 448)), ("wide.png", (896, 448))):
        Image.effect_noise(size, 60).convert("RGB").save(folder / name)
    with open(folder / "train.jsonl", "w") as f:
        for i in range(n):
            wide = i % 3 == 0
            image_tokens = 3 * 256 if wide else 256
            target = math.exp(rng.uniform(math.log(200), math.log(8000)))
            words = max(8, int((target - image_tokens - 40) / per_word))
            text = " ".join(rng.choice(WORDS) for _ in range(words))
            # the filler sits in the question: an instruct backbone trains on the answer only (no reasoning target)
            row = {"id": f"s{i}", "images": ["wide.png" if wide else "square.png"],
                   "question": f"<image>\n{text}\nHow many shapes?", "answer": "3", "reasoning": "3"}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    return folder / "train.jsonl"


def overrides(spec: dict, data: Path, steps: int, batch: int) -> list[str]:
    trainable = "[vision,adapter,backbone]" if spec["train"] == "full" else "[adapter]"
    trainer = "trainer=gpu" if spec["zero"] == 0 else f"trainer=deepspeed_z{spec['zero']}"
    trainer = "trainer=cpu" if MODEL["cpu"] else trainer
    out = [f"model={MODEL['model']}", f"backbone={spec['backbone']}", "stage=sft", trainer,
           f"trainer.devices={spec['gpus']}",
           "data=jsonl", f"data.train={data}", f"stage.trainable={trainable}", f"stage.batch_size={batch}",
           f"stage.max_steps={steps}", "stage.val_every=100000", "stage.ckpt_every=0", "stage.val_generate=0",
           "stage.lr=1e-5", "stage.warmup_ratio=0", "allow_random_weights=true", "trainer.log_every_n_steps=1",
           "data.loader.num_workers=4",
           f"stage.packing={'true' if spec['batching'] == 'packed' else 'false'}"]  # fmt: skip
    if spec["ckpt"]:
        out.append("stage.activation_checkpointing=[backbone]")
    return out + MODEL["extra"] + spec.get("overrides", [])


def planner_total(args: list[str], knobs: dict[str, int]) -> float | None:
    """The planner's per-GPU total (GiB) for a run's overrides and the batch shape it actually saw."""
    keep = [a for a in args if a.split("=")[0] not in ("data.train", "data", "data.loader.num_workers")]
    cmd = [sys.executable, "-m", "r1v", "inspect", *keep, *(f"planner.{k}={v}" for k, v in knobs.items())]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    m = re.search(r"^\s*total\s+([\d.]+) GiB", proc.stdout, re.M)
    return float(m.group(1)) if m else None


def planner_shape(logged: list[dict], batch: int, packed: bool) -> dict[str, int]:
    """The planner's batch knobs for the widest batch a run logged (the first batch included): its tokens, image
    tiles and answer tokens (the chunked loss runs the LM head on those only). Packed: one sequence of it;
    padded: ``batch`` sequences of the widest padded length, tiles and answers shared out (rounded up)."""
    wide = max(logged, key=lambda r: float(r["perf/padded_tokens"]))
    tokens = int(float(wide["perf/padded_tokens"]))
    tiles, answer = (int(float(wide.get(k) or 0)) for k in ("perf/tiles", "perf/answer_tokens"))
    if packed:
        return {"micro_batch": 1, "seq_len": tokens, "images": 1, "tiles": tiles, "answer_tokens": answer}
    return {"micro_batch": batch, "seq_len": tokens // batch, "images": 1, "tiles": -(-tiles // batch),
            "answer_tokens": -(-answer // batch)}  # fmt: skip


def run(spec: dict, data: Path, work: Path, out: Path, steps: int, batch: int, warmup: int) -> dict:
    args = overrides(spec, data, steps, batch)
    log = out / f"{spec['name']}.log"
    cmd = [sys.executable, "-m", "r1v.train", *args, f"run={spec['name']}", *QUIET]
    with open(log, "w") as f:
        try:  # a run cut by --limit keeps the batches it logged
            code = subprocess.run(cmd, cwd=work, stdout=f, stderr=subprocess.STDOUT, timeout=LIMIT["s"],
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            code = 0 if (work / "runs" / spec["name"] / "metrics.csv").exists() else 124
            print(f"{spec['name']}: cut at {LIMIT['s']} s; counting the batches it logged")
    if code:
        print(f"{spec['name']}: failed ({code}); tail of {log}:\n" + "".join(log.read_text().splitlines(True)[-15:]))
        return {**spec, "failed": True}
    shutil.copy(work / "runs" / spec["name"] / "metrics.csv", out / f"metrics_{spec['name']}.csv")
    with open(work / "runs" / spec["name"] / "metrics.csv") as fh:
        logged = [r for r in csv.DictReader(fh) if r.get("perf/padded_tokens")]
    rows = [r for r in logged if r.get("perf/tflops")]  # the first batch has no rate (its clock starts there)
    if not rows:
        print(f"{spec['name']}: no batch logged; see {log}")
        return {**spec, "failed": True}
    counted = rows[warmup:] or rows
    f = lambda k: [float(r[k]) for r in counted if r.get(k)]  # noqa: E731
    seconds, real, padded = sum(f("perf/batch_s")), sum(f("perf/real_tokens")), sum(f("perf/padded_tokens"))
    flops = sum(t * s for t, s in zip(f("perf/tflops"), f("perf/batch_s"), strict=True)) * 1e12
    peak = max((float(r["perf/peak_reserved_gib"]) for r in rows if r.get("perf/peak_reserved_gib")), default=0.0)
    alloc = max((float(r["perf/peak_alloc_gib"]) for r in rows if r.get("perf/peak_alloc_gib")), default=0.0)
    with_mfu = [r for r in counted if r.get("perf/mfu")]  # the GPU's peak, recovered from one logged MFU
    peak_flops = float(with_mfu[0]["perf/tflops"]) * 1e12 / float(with_mfu[0]["perf/mfu"]) if with_mfu else None
    knobs = {"zero": spec["zero"], "gpus": spec["gpus"], **planner_shape(logged, batch, spec["batching"] == "packed")}
    planned = planner_total(args, knobs)
    return {**spec, "batches_counted": len(counted), "real_tokens_per_s_per_gpu": real / seconds,
            "padding_share": 1 - real / padded, "tflops_per_gpu": flops / seconds / 1e12,
            "mfu": (flops / seconds) / peak_flops if peak_flops else None,
            "peak_reserved_gib": peak, "peak_alloc_gib": alloc, "planner_gib": planned, "planner_knobs": knobs,
            "planner_vs_measured": planned / peak if planned and peak else None}  # fmt: skip


def parse(text: str) -> dict:
    parts = text.split(":")
    if len(parts) < 6 or any(p != "ckpt" and "=" not in p for p in parts[6:]):
        raise SystemExit(f"--run {text}: expected name:backbone:gpus:zero:train:batching[:ckpt][:key=value…]")
    name, backbone, gpus, zero, train, batching = parts[:6]
    if train not in ("full", "adapter") or batching not in ("packed", "padded"):
        raise SystemExit(f"--run {text}: train is full|adapter, batching packed|padded")
    return {"name": name, "backbone": backbone, "gpus": int(gpus), "zero": int(zero), "train": train,
            "batching": batching, "ckpt": "ckpt" in parts[6:],
            "overrides": [p for p in parts[6:] if "=" in p]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, type=parse)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4, help="samples per micro-batch per GPU")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--model", default="r1v_small", help="model preset (the backbone comes from each --run)")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides added to every run (e.g. cut depths)")
    ap.add_argument("--cpu", action="store_true", help="trainer=cpu: check the script on a tiny model")
    ap.add_argument("--work", type=Path, help="where the runs and data go (default: a new temporary folder)")
    ap.add_argument("--limit", type=float, help="seconds per run; a cut run counts the batches it logged")
    args = ap.parse_args()
    LIMIT["s"] = args.limit
    MODEL.update(model=args.model, cpu=args.cpu, extra=args.extra)
    args.out.mkdir(parents=True, exist_ok=True)
    # runs (their exported weights: GBs for full fine-tuning) stay out of --out, which a GPU call brings back
    work = args.work or Path(tempfile.mkdtemp(prefix="sft_throughput_"))
    data = write_data(work / "data", args.n, seed=0)
    results = []
    for spec in args.run:  # written after every run: a cut call keeps what finished
        results.append(run(spec, data, work, args.out, args.steps, args.batch, args.warmup))
        (args.out / "sft_throughput.json").write_text(json.dumps(results, indent=1))
    ok = [r for r in results if not r.get("failed")]
    for r in ok:  # packed ÷ padded of the same setting, n-GPU ÷ 1-GPU of the same setting
        key = (r["backbone"], r["zero"], r["train"], r["ckpt"])
        pad = [o for o in ok if (o["backbone"], o["zero"], o["train"], o["ckpt"]) == key and o["gpus"] == r["gpus"]
               and o["batching"] == "padded"]  # fmt: skip
        one = [o for o in ok if (o["backbone"], o["zero"], o["train"], o["ckpt"]) == key and o["gpus"] == 1
               and o["batching"] == r["batching"]]  # fmt: skip
        r["packed_vs_padded"] = r["real_tokens_per_s_per_gpu"] / pad[0]["real_tokens_per_s_per_gpu"] if pad else None
        r["scaling_vs_1gpu"] = r["gpus"] * r["real_tokens_per_s_per_gpu"] / one[0]["real_tokens_per_s_per_gpu"] \
            if one and r["gpus"] > 1 else None  # fmt: skip
    fmt = lambda v, p=2: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
    print(f"{'run':22s} {'GPUs':>4s} {'ZeRO':>4s} {'tok/s/GPU':>9s} {'pad %':>5s} {'TFLOP/s':>7s} {'MFU':>5s} "
          f"{'×padded':>7s} {'scaling':>7s} {'peak GiB':>8s} {'plan GiB':>8s} {'plan/peak':>9s}")  # fmt: skip
    for r in ok:
        print(f"{r['name']:22s} {r['gpus']:4d} {r['zero']:4d} {r['real_tokens_per_s_per_gpu']:9.0f} "
              f"{100 * r['padding_share']:5.1f} {r['tflops_per_gpu']:7.1f} {fmt(r['mfu'], 3):>5s} "
              f"{fmt(r['packed_vs_padded']):>7s} {fmt(r['scaling_vs_1gpu']):>7s} {r['peak_reserved_gib']:8.1f} "
              f"{fmt(r['planner_gib'], 1):>8s} {fmt(r['planner_vs_measured']):>9s}")  # fmt: skip
    print(
        "MFU: model FLOPs on real tokens ÷ (time × dense bf16 peak, 989 TFLOP/s on an H100/H200); "
        "targets: MFU ≥ 0.5 (full FT), scaling ≥ 1.8, plan/peak within 0.8–1.2"
    )
    (args.out / "sft_throughput.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

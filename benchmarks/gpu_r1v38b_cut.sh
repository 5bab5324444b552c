#!/usr/bin/env bash
# Issue 11 on 2 GPUs (nvidia-h200-x2): model=r1v38b with the encoder and the backbone cut to a depth that fits
# (InternViT-6B and R1-Distill-Qwen-32B at their full width, DEPTH layers each, random weights initialised under
# ZeRO-3 where the strategy is ZeRO-3), per run: one SFT step or a few GRPO steps (G 8, ~1k-token completions),
# the per-GPU peak memory against the planner's prediction for the same settings, and the GRPO step split into
# rollout / reference / update. Adapter-only (R1V) runs use the planner's recommended strategy; whole-model (R1V3)
# runs use ZeRO-3 with activation checkpointing.
#   DEPTH=8 STEPS=2 MAX_NEW=1024 bash benchmarks/gpu_r1v38b_cut.sh        (results under $OUT)
# GPUS=1 runs on one GPU (default 2). ONLY="grpo_adapter_z3 grpo_whole_z3" runs a subset; LIMIT=seconds cuts each run.
set -euo pipefail
out=${OUT:-.}
src=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cd "$work"
DEPTH=${DEPTH:-8}
STEPS=${STEPS:-2}
MAX_NEW=${MAX_NEW:-1024}
CUT="model=r1v38b model.backbone.num_hidden_layers=$DEPTH model.vision.num_hidden_layers=$DEPTH allow_random_weights=true"
Q="logger=csv trainer.enable_progress_bar=false trainer.enable_model_summary=false trainer.devices=${GPUS:-2}
   trainer.log_every_n_steps=1 stage.ckpt_every=0 stage.val_every=100000 stage.val_generate=0"
G="stage=grpo stage.batch_size=8 stage.group_size=8 stage.micro_batch_size=4 stage.max_new_tokens=$MAX_NEW
   stage.max_steps=$STEPS stage.policy_loss.beta=0.04 stage.lr=1e-6 stage.rollout.name=static"
WHOLE="stage.trainable=[vision,adapter,backbone] stage.activation_checkpointing=[backbone]"
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
run() {  # name, overrides...
  want "$1" || return 0
  local name=$1 s=$SECONDS; shift
  ${LIMIT:+timeout $LIMIT} python3 -m r1v.train $CUT $Q run="$name" "$@" > "$out/$name.log" 2>&1 \
    || tail -20 "$out/$name.log"  # a run cut by LIMIT still counts the steps it logged
  echo "$((SECONDS - s)) s: $name"
  cp "runs/$name/metrics.csv" "$out/metrics_$name.csv" 2>/dev/null || true
}
shape() {  # the planner's knobs for the widest batch a packed SFT run logged (tokens, tiles, answer tokens)
  python3 -c "import csv, sys; sys.path.insert(0, '$src'); from sft_throughput import planner_shape as p
rows = [r for r in csv.DictReader(open('$out/metrics_$1.csv')) if r.get('perf/padded_tokens')]
print(' '.join(f'planner.{k}={v}' for k, v in p(rows, 1, True).items()))" 2>/dev/null || echo planner.seq_len=8192
}
plan() {  # name, planner knobs + overrides: the planner's per-GPU total for the same composition
  want "$1" || return 0
  local name=$1; shift
  python3 -m r1v inspect $CUT "$@" planner.gpus=${GPUS:-2} 2>/dev/null | awk '/^  total /{print $2}' > "$out/plan_$name.txt"
}
# SFT: the JSONL of benchmarks/sft_throughput.py (200–8000 tokens, one image each), 2 samples per GPU, packed
python3 -c "import sys; sys.path.insert(0, '$src'); from pathlib import Path; import sft_throughput as s; s.write_data(Path('$work/data'), 64, 0)"
S="stage=sft data=jsonl data.train=$work/data/train.jsonl stage.batch_size=2 stage.max_steps=3 stage.packing=true"
run sft_adapter_z2 $S trainer=deepspeed_z2
plan sft_adapter_z2 stage=sft trainer=deepspeed_z2 $(shape sft_adapter_z2)
run sft_whole_z3 $S trainer=deepspeed_z3 $WHOLE
plan sft_whole_z3 stage=sft trainer=deepspeed_z3 $WHOLE $(shape sft_whole_z3)
run grpo_adapter_z3 $G trainer=deepspeed_z3
plan grpo_adapter_z3 $G trainer=deepspeed_z3 planner.prompt_len=512 planner.completion_len=$MAX_NEW planner.tiles=1
run grpo_whole_z3 $G trainer=deepspeed_z3 $WHOLE
plan grpo_whole_z3 $G trainer=deepspeed_z3 $WHOLE planner.prompt_len=512 planner.completion_len=$MAX_NEW planner.tiles=1
python3 - "$out" <<'PY'
import csv, json, os, sys
out, res = sys.argv[1], {}
for name in ("sft_adapter_z2", "sft_whole_z3", "grpo_adapter_z3", "grpo_whole_z3"):
    path = f"{out}/metrics_{name}.csv"
    if not os.path.exists(path):
        if os.path.exists(f"{out}/{name}.log"):
            res[name] = {"failed": True}
        continue
    rows = list(csv.DictReader(open(path)))
    f = lambda r, k: float(r[k]) if r.get(k) else None
    peak = max((f(r, "perf/peak_reserved_gib") or 0.0) for r in rows)
    alloc = max((f(r, "perf/peak_alloc_gib") or 0.0) for r in rows)
    steps = [r for r in rows if r.get("time/rollout_s")][1:]  # GRPO: the first step compiles and captures
    plan = open(f"{out}/plan_{name}.txt").read().strip()
    res[name] = {"peak_reserved_gib": peak, "peak_alloc_gib": alloc, "planner_gib": float(plan) if plan else None}
    if steps:
        for k in ("rollout", "reference", "update"):
            res[name][f"{k}_s"] = sum(f(r, f"time/{k}_s") for r in steps) / len(steps)
    if res[name]["planner_gib"]:
        res[name]["planner_vs_peak"] = res[name]["planner_gib"] / peak
print(f"{'run':16s} {'peak GiB':>8s} {'alloc GiB':>9s} {'plan GiB':>8s} {'plan/peak':>9s} {'rollout s':>9s} {'ref s':>6s} {'update s':>8s}")
for name, r in res.items():
    if r.get("failed"):
        print(f"{name:16s} failed (see its log)")
        continue
    g = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else "—"
    print(f"{name:16s} {r['peak_reserved_gib']:8.1f} {r['peak_alloc_gib']:9.1f} {g('planner_gib', '8.1f'):>8s} "
          f"{g('planner_vs_peak', '9.2f'):>9s} {g('rollout_s', '9.1f'):>9s} {g('reference_s', '6.1f'):>6s} {g('update_s', '8.1f'):>8s}")
json.dump(res, open(f"{out}/r1v38b_cut.json", "w"), indent=1)
PY

#!/usr/bin/env bash
# GRPO end to end on GPUS GPUs (default 2: nvidia-h200-x2): generated tokens per second per GPU over whole steps (rollout +
# rewards + reference + update), model=r1v_small (InternViT-300M + Qwen2.5-1.5B, random weights written once by
# benchmarks/random_weights.py, so completions run to the budget), 8 prompts × G = 8 per rank, β = 0.04.
# rollout=static (compile + fused GEMMs) under ZeRO-2 and ZeRO-3, and the baseline rollout=hf under ZeRO-2 for
# one step with a shorter budget (its per-token cost does not depend on the budget).
# On one GPU, static_gpu (trainer=gpu: plain Lightning, no DeepSpeed) is the issue-24 candidate against static_z2.
#   MAX_NEW=512 STEPS=3 HF_NEW=64 bash benchmarks/gpu_grpo_throughput.sh        (results under $OUT)
#   GPUS=1 RUNS="static_gpu static_z2" STEPS=4 bash benchmarks/gpu_grpo_throughput.sh
# static_z2_packed / _liger / _both: static_z2 with stage.packing=true (padding-free log-prob passes), stage.kernels=liger, both.
set -euo pipefail
out=${OUT:-.}
src=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cd "$work"
python3 "$src/random_weights.py" model=r1v_small --out "$work/w" > "$out/weights.log" 2>&1
W=$(tail -1 "$out/weights.log")
MAX_NEW=${MAX_NEW:-512}
STEPS=${STEPS:-3}
A="model=r1v_small stage=grpo $W trainer.devices=${GPUS:-2} stage.batch_size=8 stage.group_size=8 stage.micro_batch_size=8
   stage.val_every=1000 stage.val_generate=0 stage.ckpt_every=0 stage.policy_loss.beta=0.04 stage.lr=1e-6
   logger=csv trainer.enable_progress_bar=false trainer.enable_model_summary=false"
STATIC="stage.rollout.name=static stage.rollout.compile=true stage.rollout.fuse=true"
run() {  # name, extra args...
  local name=$1 s=$SECONDS; shift
  python3 -m r1v.train $A run="$name" "$@" > "$out/$name.log" 2>&1 || { tail -30 "$out/$name.log"; return 1; }
  echo "$((SECONDS - s)) s: $name"
  cp "runs/$name/metrics.csv" "$out/metrics_$name.csv"
}
RUNS=${RUNS:-static_z2 static_z3 hf_z2}
for name in $RUNS; do
  case $name in
    static_gpu) run static_gpu trainer=gpu $STATIC stage.max_new_tokens="$MAX_NEW" stage.max_steps="$STEPS" ;;
    static_z2) run static_z2 trainer=deepspeed_z2 $STATIC stage.max_new_tokens="$MAX_NEW" stage.max_steps="$STEPS" ;;
    static_z2_packed) run static_z2_packed trainer=deepspeed_z2 $STATIC stage.packing=true stage.max_new_tokens="$MAX_NEW" stage.max_steps="$STEPS" ;;
    static_z2_liger) run static_z2_liger trainer=deepspeed_z2 $STATIC stage.kernels=liger stage.max_new_tokens="$MAX_NEW" stage.max_steps="$STEPS" ;;
    static_z2_both) run static_z2_both trainer=deepspeed_z2 $STATIC stage.packing=true stage.kernels=liger stage.max_new_tokens="$MAX_NEW" stage.max_steps="$STEPS" ;;
    static_z3) run static_z3 trainer=deepspeed_z3 $STATIC stage.max_new_tokens="$MAX_NEW" stage.max_steps="$STEPS" ;;
    hf_z2) run hf_z2 trainer=deepspeed_z2 stage.max_new_tokens="${HF_NEW:-64}" stage.max_steps=1 ;;
    *) echo "RUNS: '$name' is not one of static_gpu static_z2 static_z2_packed static_z2_liger static_z2_both static_z3 hf_z2"; exit 2 ;;
  esac
done
RUNS="$RUNS" python3 - "$out" <<'PY'
import csv, json, os, sys
out = sys.argv[1]
res = {}
for name in os.environ["RUNS"].split():
    rows = [r for r in csv.DictReader(open(f"{out}/metrics_{name}.csv")) if r.get("time/rollout_s")]
    steps = rows[1:] or rows  # the first step captures graphs / compiles
    f = lambda r, k: float(r[k]) if r.get(k) else 0.0
    tokens = [8 * 8 * f(r, "completion/length_mean") for r in steps]  # per rank (= per GPU)
    total = [f(r, "time/rollout_s") + f(r, "time/reference_s") + f(r, "time/update_s") for r in steps]
    rollout = [f(r, "time/rollout_s") for r in steps]
    res[name] = {"steps_counted": len(steps), "tokens_per_step_per_gpu": sum(tokens) / len(steps),
                 "step_s": sum(total) / len(steps), "rollout_s": sum(rollout) / len(steps),
                 "reference_s": sum(f(r, "time/reference_s") for r in steps) / len(steps),
                 "update_s": sum(f(r, "time/update_s") for r in steps) / len(steps),
                 "tokens_per_s_per_gpu": sum(tokens) / sum(total), "rollout_tokens_per_s_per_gpu": sum(tokens) / sum(rollout),
                 "first_step_rollout_s": f(rows[0], "time/rollout_s")}
if "static_z3" in res and "static_z2" in res:
    res["static_z3"]["rollout_vs_z2"] = res["static_z3"]["rollout_s"] / res["static_z2"]["rollout_s"]
base = res.get("hf_z2", res[next(iter(res))])["rollout_tokens_per_s_per_gpu"]  # × that run's rollout
print(f"{'run':12s} {'tok/step/GPU':>12s} {'step s':>7s} {'rollout s':>9s} {'ref s':>6s} {'update s':>8s} {'tok/s/GPU':>9s} {'rollout tok/s/GPU':>17s} {'× hf rollout':>12s}")
for name, r in res.items():
    print(f"{name:12s} {r['tokens_per_step_per_gpu']:12.0f} {r['step_s']:7.2f} {r['rollout_s']:9.2f} {r['reference_s']:6.2f} "
          f"{r['update_s']:8.2f} {r['tokens_per_s_per_gpu']:9.0f} {r['rollout_tokens_per_s_per_gpu']:17.0f} {r['rollout_tokens_per_s_per_gpu'] / base:12.1f}")
if "rollout_vs_z2" in res.get("static_z3", {}):
    print("ZeRO-3 / ZeRO-2 rollout time:", round(res["static_z3"]["rollout_vs_z2"], 2), "(target ≤ 1.5)")
for name, r in res.items():  # phase shares of the step: where the time goes
    print(f"{name}: rollout {r['rollout_s'] / r['step_s']:.0%}, reference {r['reference_s'] / r['step_s']:.0%}, "
          f"update {r['update_s'] / r['step_s']:.0%}")
json.dump(res, open(f"{out}/gpu_grpo_throughput.json", "w"), indent=1)
PY

#!/usr/bin/env bash
# GRPO on one GPU: the tiny re-assembled model under trainer=gpu, deepspeed_z2 and deepspeed_z3 (same seed,
# 20 steps each), then model=r1v38b cut to 2 backbone / 2 vision layers (random weights) for 2 steps.
# Prints accuracy reward first/last and mean rollout / reference / update seconds per step.
set -euo pipefail
out=${OUT:-.}
work=$(mktemp -d)
cd "$work"
Q="logger=csv trainer.enable_progress_bar=false trainer.enable_model_summary=false"
G="stage=grpo model=tiny_reasoner checkpoint=runs/re stage.lr=5e-3 stage.max_new_tokens=96 stage.max_steps=20 stage.val_every=20 stage.val_generate=64 stage.policy_loss.beta=0.04"
n=0
t() {
  n=$((n + 1)); local s=$SECONDS
  "$@" > "$out/$n.log" 2>&1 || { tail -40 "$out/$n.log"; exit 1; }
  echo "$((SECONDS - s)) s: $*"
}
t python3 -m r1v.train run=align trainer=gpu $Q
t python3 -m r1v.train stage=reassemble model=tiny_reasoner checkpoint=runs/align run=re trainer=gpu $Q
trainers="gpu deepspeed_z2"
[ "${R1V_GPU_Z3:-0}" = 1 ] && trainers="$trainers deepspeed_z3"   # ZeRO-3 rollouts: not fast yet (issue 5)
for tr in $trainers; do
  t python3 -m r1v.train $G run=g_$tr trainer=$tr $Q || true
  cp runs/g_$tr/metrics.csv "$out/metrics_$tr.csv" 2>/dev/null || true
done
t python3 -m r1v.train model=r1v38b stage=grpo run=big allow_random_weights=true model.backbone.num_hidden_layers=2 \
  model.vision.num_hidden_layers=2 model.max_tiles=1 stage.batch_size=2 stage.group_size=4 stage.max_new_tokens=64 \
  stage.max_steps=2 stage.val_every=2 stage.val_generate=2 stage.micro_batch_size=4 stage.lr=1e-5 trainer=gpu $Q || true
cp runs/big/metrics.csv "$out/metrics_big.csv" 2>/dev/null || true
python3 - <<'PY'
import csv, glob, os
for run in sorted(glob.glob("runs/g_*")) + ["runs/big"]:
    if not os.path.exists(f"{run}/metrics.csv"):
        print(run, "no metrics"); continue
    rows = list(csv.DictReader(open(f"{run}/metrics.csv")))
    col = lambda k: [float(r[k]) for r in rows if r.get(k)]
    acc = col("reward/accuracy"); f = max(len(acc) // 5, 1)
    mean = lambda v: sum(v) / len(v) if v else float("nan")
    print(run, f"steps {len(acc)} acc first {mean(acc[:f]):.3f} last {mean(acc[-f:]):.3f}",
          f"rollout {mean(col('time/rollout_s')):.3f}s ref {mean(col('time/reference_s')):.3f}s update {mean(col('time/update_s')):.3f}s",
          f"kl {mean(col('train/kl')):.4f} val {col('val/accuracy')}")
PY

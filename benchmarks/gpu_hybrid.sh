#!/usr/bin/env bash
# Hybrid optimisation I on one GPU (tiny model): align → reassemble → sft → distill → iterative_sft
# under trainer=gpu, then iterative_sft under trainer=deepspeed_z2 (a new DeepSpeed engine per round
# around the same model). Prints held-out accuracy per stage and wall times. Writes into ${OUT:-.}.
set -euo pipefail
out=${OUT:-.}
work=$(mktemp -d)
cd "$work"
n=0
t() {  # run one stage, log to $out/<n>.log, print its wall time
  n=$((n + 1)); local s=$SECONDS
  "$@" > "$out/$n.log" 2>&1 || { tail -40 "$out/$n.log"; exit 1; }
  echo "$((SECONDS - s)) s: $*"
}
Q="logger=csv trainer.enable_progress_bar=false trainer.enable_model_summary=false"
t python3 -m r1v.train run=align trainer=gpu $Q
t python3 -m r1v.train stage=reassemble model=tiny_reasoner checkpoint=runs/align run=re trainer=gpu $Q
t python3 -m r1v.train stage=sft model=tiny_reasoner checkpoint=runs/re run=sft trainer=gpu $Q
t python3 -m r1v.train stage=distill model=tiny_reasoner checkpoint=runs/sft run=d distill.limit=1000 trainer=gpu $Q
t python3 -m r1v.train stage=iterative_sft model=tiny_reasoner checkpoint=runs/sft run=it stage.errors.pool=1024 trainer=gpu $Q
t python3 -m r1v.train stage=iterative_sft model=tiny_reasoner checkpoint=runs/sft run=itz stage.errors.pool=256 stage.taus=[2,4] stage.lrs=[1e-3,2e-4] trainer=deepspeed_z2 $Q
python3 - <<'PY'
import json
for r in ("it", "itz"):
    s = json.load(open(f"runs/{r}/iterative.json"))
    print(r, [(x["round"], x["n_used"], x["val_accuracy"], x["pool_accuracy"]) for x in s["rounds"]])
d = json.load(open("runs/d/distill.json"))
print("distill", {k: d[k] for k in ("samples", "kept", "revised", "dropped", "repetition_penalty", "completion_tokens")})
PY
cp runs/it/iterative.json "$out/iterative_gpu.json"; cp runs/itz/iterative.json "$out/iterative_z2.json"; cp runs/d/distill.json "$out/distill_gpu.json"

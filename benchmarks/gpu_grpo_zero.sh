#!/usr/bin/env bash
# GRPO on 2 GPUs (nvidia-h200-x2): model=r1v_small (InternViT-300M + Qwen2.5-1.5B, ≈1.9B) from one random
# initialisation written to disk (benchmarks/random_weights.py), under trainer=deepspeed_z2 and deepspeed_z3,
# β = 0.04 (adapter reference), 4 steps each; then ZeRO-3 with the per-module hooks left live in the decode
# loop (R1V_ZERO3_DECODE_HOOKS=live, the baseline) for 1 step. Prints the log-prob agreement of the fixed
# batch (stage.logp_probe) and mean rollout / reference / update seconds per step, as ratios to ZeRO-2.
#   MAX_NEW=256 STEPS=4 LIVE_TIMEOUT=900 bash benchmarks/gpu_grpo_zero.sh      (results under $OUT; LIVE=0 skips the baseline)
set -euo pipefail
out=${OUT:-.}
src=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cd "$work"
python3 "$src/random_weights.py" model=r1v_small --out "$work/w" > "$out/weights.log" 2>&1
W=$(tail -1 "$out/weights.log")
MAX_NEW=${MAX_NEW:-256}
STEPS=${STEPS:-4}
A="model=r1v_small stage=grpo $W trainer.devices=2 stage.logp_probe=8 stage.batch_size=4 stage.group_size=8
   stage.micro_batch_size=8 stage.max_new_tokens=$MAX_NEW stage.val_every=1000 stage.val_generate=0
   stage.ckpt_every=1000 stage.policy_loss.beta=0.04 stage.lr=1e-6 logger=csv trainer.enable_progress_bar=false
   trainer.enable_model_summary=false"
run() {  # name, extra args...
  local name=$1 s=$SECONDS; shift
  ${LIMIT:+timeout $LIMIT} python3 -m r1v.train $A run="$name" "$@" > "$out/$name.log" 2>&1 \
    || { tail -30 "$out/$name.log"; return 1; }
  echo "$((SECONDS - s)) s: $name"
  cp "runs/$name/metrics.csv" "$out/metrics_$name.csv"
  cp "runs/$name/logp_probe.pt" "$out/probe_$name.pt"
}
run z2 trainer=deepspeed_z2 stage.max_steps="$STEPS"
run z3 trainer=deepspeed_z3 stage.max_steps="$STEPS"
[ "${LIVE:-1}" = 0 ] || LIMIT=${LIVE_TIMEOUT:-900} R1V_ZERO3_DECODE_HOOKS=live run z3_live_hooks trainer=deepspeed_z3 stage.max_steps=1 \
  || echo "z3_live_hooks: did not finish within ${LIVE_TIMEOUT:-900} s"
python3 - "$out" <<'PY'
import csv, json, os, sys
import torch
out = sys.argv[1]
probe = {n: torch.load(f"{out}/probe_{n}.pt", weights_only=False) for n in ("z2", "z3")}
diff = torch.cat([(a - b).abs() for a, b in zip(probe["z2"]["logp"], probe["z3"]["logp"])])
t2, t3 = probe["z2"]["tensors"], probe["z3"]["tensors"]
differ = [k for k, v in t2.items() if k not in t3 or t3[k][0] != v[0] or abs(t3[k][1] - v[1]) > 1e-5 * max(1, abs(v[1]))]
res = {"logp_abs_diff_z2_z3": {"max": float(diff.max()), "mean": float(diff.mean()), "tokens": len(diff)},
       "tensors_compared": len(t2), "tensors_differing": differ[:10], "runs": {}}
for name in ("z2", "z3", "z3_live_hooks"):
    path = f"{out}/metrics_{name}.csv"
    if not os.path.exists(path):
        continue
    rows = list(csv.DictReader(open(path)))
    col = lambda k: [float(r[k]) for r in rows if r.get(k)]
    mean = lambda v: sum(v) / len(v) if v else float("nan")
    res["runs"][name] = {k: mean(col(f"time/{k}_s")) for k in ("rollout", "reference", "update")}
    res["runs"][name]["steps"] = len(col("time/rollout_s"))
    res["runs"][name]["completion_length_mean"] = mean(col("completion/length_mean"))
    res["runs"][name]["kl_last"] = (col("train/kl") or [float("nan")])[-1]
base = res["runs"]["z2"]
for name, r in res["runs"].items():
    r["rollout_vs_z2"] = r["rollout"] / base["rollout"]
    r["update_vs_z2"] = r["update"] / base["update"]
print(json.dumps(res, indent=1))
json.dump(res, open(f"{out}/gpu_grpo_zero.json", "w"), indent=1)
PY

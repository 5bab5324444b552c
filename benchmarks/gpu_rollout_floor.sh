#!/usr/bin/env bash
# Issue 24's rollout figures on one GPU (H100 or H200), each against the baseline engine in the same process:
#   part 1: Qwen2.5-1.5B shapes, batch 64, prompts 192-256, 512 sampled tokens (T 0.6 / top-p 0.95), with each
#           variant's kernel classes; then R1V's 8k-token completions (step time over the fuller cache)
#   part 2: R1V's LLM shapes (Qwen2-32B: R1-Distill-Qwen-32B), batch 32 and 64, prompts 1-2k, 1k new tokens;
#           on an 80 GB card the first 24 of the 64 layers (the full depth estimated by the floors' ratio)
#   bash benchmarks/gpu_rollout_floor.sh 1|2        (results JSON under $OUT, named by card)
set -euo pipefail
out=${OUT:-benchmarks/results}
card=$(python3 -c "import torch; print('h200' if 'H200' in torch.cuda.get_device_name() else 'h100')")
mem=$(python3 -c "import torch; print(torch.cuda.get_device_properties(0).total_memory // 2**30)")
cd benchmarks
if [ "${1:-1}" = 1 ] || [ "${1:-1}" = 1a ]; then
  python3 rollout_floor.py --shape 1.5b --profile --out "$out/rollout_floor_1p5b_$card.json"
  [ "${1:-1}" = 1a ] || python3 rollout_floor.py --shape 1.5b --new 8192 --segments 1024 --hf-steps 0 \
    --out "$out/rollout_floor_1p5b_8k_$card.json"
else
  layers=64; [ "$mem" -lt 120 ] && layers=24
  python3 rollout_floor.py --shape 32b --layers "$layers" --batch 32 64 --prompt 1024 2048 --new 1024 --hf-steps 4 \
    --variants "baseline: sdpa windows" "split-K triton attention + split-K GEMMs" \
    --out "$out/rollout_floor_32b_${layers}l_$card.json"
fi

#!/usr/bin/env bash
# Wall time of the default job (`python -m r1v.train`, no arguments) on this machine, run 3 times.
set -euo pipefail
tmp=$(mktemp -d)
cd "$tmp"
for i in 1 2 3; do
  /usr/bin/time -f "run $i: %e s wall, %M KB max RSS" python -m r1v.train run="t$i" trainer.enable_progress_bar=false \
    >/dev/null 2>"$tmp/err$i" || { tail -5 "$tmp/err$i"; exit 1; }
  tail -1 "$tmp/err$i"
done
rm -rf "$tmp"

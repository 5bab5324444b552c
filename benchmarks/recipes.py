"""The one-command recipes on the tiny model, per seed: held-out accuracy (synthetic, 64 questions, greedy)
after each stage, from each recipe's recipe.json, as a table.

    python benchmarks/recipes.py --recipe r1v --seeds 0 1 2      (≈ 4 minutes per seed on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="r1v")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more python -m r1v.recipe overrides")
    args = ap.parse_args()
    out = args.out or Path(f"benchmarks/results/recipe_{args.recipe}.json")
    rows: dict[int, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="r1v-recipe-") as tmp:
        for seed in args.seeds:
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "r1v.recipe", f"recipe={args.recipe}", f"seed={seed}", f"run=s{seed}",
                   *args.extra]  # fmt: skip
            proc = subprocess.run(cmd, cwd=tmp, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                                  text=True)  # fmt: skip
            if proc.returncode:
                raise SystemExit(f"seed {seed}: {proc.stderr[-3000:]}")
            state = json.loads((Path(tmp) / "runs" / f"s{seed}" / "recipe.json").read_text())
            rows[seed] = {"minutes": round((time.perf_counter() - start) / 60, 1),
                          **{n: (s["eval"] or {}).get("pass@1") for n, s in state["stages"].items()}}  # fmt: skip
            print(f"seed {seed}: {rows[seed]}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"recipe": args.recipe, "extra": args.extra, "per_seed": rows}, indent=2) + "\n")
    stages = [k for k in next(iter(rows.values())) if k != "minutes"]
    print("\n| seed | " + " | ".join(stages) + " | minutes |")
    print("|---|" + "---|" * (len(stages) + 1))
    for seed, r in rows.items():
        print(f"| {seed} | " + " | ".join("–" if r[s] is None else f"{r[s]:.1f}" for s in stages)
              + f" | {r['minutes']} |")  # fmt: skip


if __name__ == "__main__":
    main()

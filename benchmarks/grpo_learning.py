"""GRPO learns on the tiny model: accuracy reward over the first and last fifth of the steps, per seed.

Per seed: align → reassemble onto the tiny reasoner (the R1V start, before any SFT), then
``stage=grpo`` (adapter only, G = 8, 8 prompts per step, rewards accuracy + format) for ``--steps``
steps. Also reports the held-out greedy accuracy the stage logs at its end, and sample completions
from the first and the last step.

    python benchmarks/grpo_learning.py --seeds 0 1 2 --steps 120

About 3 minutes per seed on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path

from _common import train  # benchmarks/_common.py (scripts run as python benchmarks/<name>.py)

GRPO = ["stage=grpo", "model=tiny_reasoner", "stage.lr=5e-3", "stage.max_new_tokens=96", "stage.val_generate=64"]


def curve(run: Path) -> tuple[list[float], list[float]]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    acc = [float(r["reward/accuracy"]) for r in rows if r.get("reward/accuracy")]
    val = [float(r["val/accuracy"]) for r in rows if r.get("val/accuracy")]
    return acc, val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/grpo_learning.json"))
    args = ap.parse_args()
    rows = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"r1v-grpo-{seed}-") as tmp:
            work = Path(tmp)
            train(work, "run=align", f"seed={seed}")
            train(work, "stage=reassemble", "model=tiny_reasoner", "checkpoint=runs/align", "run=re", f"seed={seed}")
            train(work, *GRPO, "checkpoint=runs/re", "run=g", f"seed={seed}", f"stage.max_steps={args.steps}",
                  f"stage.val_every={args.steps}")  # fmt: skip
            acc, val = curve(work / "runs" / "g")
            logged = [json.loads(x) for x in (work / "runs" / "g" / "completions.jsonl").read_text().splitlines()]
        f = max(len(acc) // 5, 1)
        samples = {f"step {r['step']}": {"question": r["question"], "answer": r["answer"],
                                         "completions": [(c["reward"], c["text"]) for c in r["completions"][:3]]}
                   for r in (logged[0], logged[-1])}  # fmt: skip
        rows[seed] = {"first_fifth": statistics.mean(acc[:f]), "last_fifth": statistics.mean(acc[-f:]),
                      "val_accuracy_end": val[-1] if val else None, "steps": len(acc), "samples": samples}  # fmt: skip
        print(f"seed {seed}: {json.dumps(rows[seed], indent=1, ensure_ascii=False)}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "per_seed": rows}, indent=2) + "\n")
    print("\n| seed | accuracy reward, first fifth | last fifth | gain | held-out accuracy at the end |")
    print("|---|---|---|---|---|")
    for seed, r in rows.items():
        print(f"| {seed} | {r['first_fifth']:.3f} | {r['last_fifth']:.3f} | {r['last_fifth'] - r['first_fifth']:+.3f} "
              f"| {r['val_accuracy_end']} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""GRPO with LoRA learns on the tiny model: accuracy reward over the first and last fifth of the steps, KL at step 0.

From the R1V start (align → reassemble onto the tiny reasoner, or ``--start <run>``), ``stage=grpo`` with
``stage.lora={r: 16, alpha: 32, dropout: 0.0, targets: [backbone]}`` and β = 0.04 (so the LoRA-off reference is
used: KL is 0 at step 0), G = 8, 8 prompts per step, rewards accuracy + format, rollouts by the static engine on
the merged LoRA weights. Two variants per seed: LoRA + the adapter (``stage.trainable=[adapter]``, the default) and
LoRA alone (``stage.trainable=[]``).

    python benchmarks/lora_grpo.py --seeds 0 --steps 120 [--start runs/reassembled]

About 3 minutes per variant on 2 CPU cores (plus about 2 minutes for align + reassemble without --start).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path

from _common import train  # benchmarks/_common.py (scripts run as python benchmarks/<name>.py)

LORA = "stage.lora={r: 16, alpha: 32, dropout: 0.0, targets: [backbone]}"
GRPO = ["stage=grpo", "model=tiny_reasoner", LORA, "stage.policy_loss.beta=0.04", "stage.max_new_tokens=96",
        "stage.val_generate=64"]  # fmt: skip
VARIANTS = {"lora+adapter": ["stage.lr=5e-3"], "lora only": ["stage.lr=5e-3", "stage.trainable=[]"]}


def curve(run: Path) -> dict[str, list[float]]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return {key: [float(r[key]) for r in rows if r.get(key)] for key in ("reward/accuracy", "train/kl", "val/accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--start", type=Path, default=None, help="a re-assembled run to start from (skips align)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lora_grpo.json"))
    args = ap.parse_args()
    rows: dict[str, dict] = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"r1v-lora-grpo-{seed}-") as tmp:
            work = Path(tmp)
            start = args.start.resolve() if args.start else work / "runs" / "re"
            if args.start is None:
                train(work, "run=align", f"seed={seed}")
                train(work, "stage=reassemble", "model=tiny_reasoner", "checkpoint=runs/align", "run=re",
                      f"seed={seed}")  # fmt: skip
            for name in args.variants:
                extra = VARIANTS[name]
                run = f"g{len(rows)}"
                train(work, *GRPO, *extra, f"checkpoint={start}", f"run={run}", f"seed={seed}",
                      f"stage.max_steps={args.steps}", f"stage.val_every={args.steps}")  # fmt: skip
                c = curve(work / "runs" / run)
                acc, f = c["reward/accuracy"], max(len(c["reward/accuracy"]) // 5, 1)
                rows[f"{seed} {name}"] = {"first_fifth": statistics.mean(acc[:f]), "last_fifth": statistics.mean(
                    acc[-f:]), "kl_step0": c["train/kl"][0], "kl_end": c["train/kl"][-1], "val_accuracy_end":
                    c["val/accuracy"][-1] if c["val/accuracy"] else None, "steps": len(acc)}  # fmt: skip
                print(f"seed {seed} {name}: {json.dumps(rows[f'{seed} {name}'])}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "lora": LORA, "runs": rows}, indent=2) + "\n")
    print("\n| seed, variant | accuracy reward, first fifth | last fifth | gain | KL step 0 | KL end | held-out acc. |")
    print("|---|---|---|---|---|---|---|")
    for key, r in rows.items():
        print(f"| {key} | {r['first_fifth']:.3f} | {r['last_fifth']:.3f} | {r['last_fifth'] - r['first_fifth']:+.3f} "
              f"| {r['kl_step0']:.2g} | {r['kl_end']:.3f} | {r['val_accuracy_end']} |")  # fmt: skip


if __name__ == "__main__":
    main()

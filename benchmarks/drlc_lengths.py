"""Response lengths under DRLC against fixed repetition penalties, per synthetic task.

Runs ``stage=distill`` three times on the same ``--n`` training samples from the same checkpoint and
seed: DRLC (P from QDAM/VTIA scores, easy → 2, hard → 1), a fixed P = 1 (no penalty) and a fixed P equal
to DRLC's mean (the same average pressure, spread evenly). Reports per task: mean P, mean generated
completion length (tokens), and the share of chains kept or revised.

    python benchmarks/drlc_lengths.py --checkpoint runs/sft --n 500

Without ``--checkpoint`` it first trains the tiny start (align → reassemble → sft, about 1.5 minutes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import train  # benchmarks/_common.py (scripts run as python benchmarks/<name>.py)

EASY_FIRST = ["color_at", "count_all", "count_color", "count_shape", "add"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="an SFT run folder of model=tiny_reasoner")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/drlc_lengths.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="r1v-drlc-") as tmp:
        work = Path(tmp)
        ckpt = args.checkpoint.resolve() if args.checkpoint else None
        if ckpt is None:
            train(work, "run=align")
            train(work, "stage=reassemble", "model=tiny_reasoner", "checkpoint=runs/align", "run=re")
            train(work, "stage=sft", "model=tiny_reasoner", "checkpoint=runs/re", "run=sft")
            ckpt = work / "runs/sft"
        base = ["stage=distill", "model=tiny_reasoner", f"checkpoint={ckpt}", f"distill.limit={args.n}",
                f"seed={args.seed}"]  # fmt: skip
        train(work, *base, "run=drlc")
        drlc = json.loads((work / "runs/drlc/distill.json").read_text())
        mean_p = drlc["repetition_penalty"]["mean"]
        train(work, *base, "run=p1", "distill.length.name=fixed", "+distill.length.repetition_penalty=1.0")
        train(work, *base, "run=pmean", "distill.length.name=fixed", f"+distill.length.repetition_penalty={mean_p}")
        runs = (("DRLC", "drlc"), ("fixed P=1", "p1"), (f"fixed P={mean_p:.2f}", "pmean"))
        results = {name: json.loads((work / f"runs/{run}/distill.json").read_text()) for name, run in runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    names = list(results)
    print(f"\n| task (easy → hard) | {' | '.join(f'{n}: P / tokens / kept' for n in names)} |")
    print("|---|" + "---|" * len(names))
    for task in EASY_FIRST:
        cells = []
        for n in names:
            t = results[n]["by_task"][task]
            cells.append(f"{t['mean_penalty']:.2f} / {t['completion_tokens']['mean']:.1f} / "
                         f"{t['kept_or_revised'] / t['n']:.2f}")  # fmt: skip
        print(f"| {task} | {' | '.join(cells)} |")
    print(f"| all | {' | '.join(str(results[n]['completion_tokens']['mean']) for n in names)} |")


if __name__ == "__main__":
    main()

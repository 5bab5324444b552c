"""Proof that a change altered no behaviour: the same jobs write the same ``metrics.csv``, value for value.

Runs, on the CPU with one thread (float sums depend on the thread count), for seeds 0 and 1: the main job (``python
-m r1v.train``), 30 SFT steps of the tiny reasoner, 10 GRPO steps, 10 MPO steps and 10 reward-model steps of it.
``--record DIR`` keeps their ``metrics.csv`` files; ``--compare DIR`` runs them again and compares every logged
value with the recorded one, except wall-clock timings (``time/*``, throughput and MFU columns), which differ
between any two runs of the same code.

    python benchmarks/same_metrics.py --record /tmp/before     # on the old code
    python benchmarks/same_metrics.py --compare /tmp/before    # on the new code: exit 0 when all equal
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import train

JOBS = {
    "main": [],
    "sft30": ["stage=sft", "model=tiny_reasoner", "stage.max_steps=30", "stage.val_every=15", "stage.val_generate=8"],
    "grpo10": ["stage=grpo", "model=tiny_reasoner", "stage.max_steps=10", "stage.val_every=5", "stage.val_generate=8",
               "stage.batch_size=4", "stage.group_size=4", "stage.max_new_tokens=32", "stage.lr=5e-3",
               "stage.policy_loss.beta=0.04", "stage.reward_isolation=inline"],
    "mpo10": ["stage=mpo", "model=tiny_reasoner", "data=synthetic_pairs", "stage.max_steps=10", "stage.val_every=5"],
    "rm10": ["stage=reward_model", "model=tiny_reasoner", "data=synthetic_pairs", "stage.max_steps=10",
             "stage.val_every=5"],
}  # fmt: skip
SEEDS = (0, 1)
WALL_CLOCK = ("time/", "perf/", "throughput", "tokens_per_s", "samples_per_s", "mfu")


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def deterministic(key: str) -> bool:
    return not any(w in key for w in WALL_CLOCK)


def run_all(out: Path) -> None:
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for name, args in JOBS.items():
            for seed in SEEDS:
                run = f"{name}_s{seed}"
                train(Path(work), *args, f"seed={seed}", f"run={run}")
                (out / f"{run}.csv").write_bytes((Path(work) / "runs" / run / "metrics.csv").read_bytes())
                print(f"{run}: {len(rows(out / f'{run}.csv'))} rows", flush=True)


def compare(before: Path, after: Path) -> list[str]:
    """Every difference between the recorded and the new files (empty: identical)."""
    problems = []
    for old in sorted(before.glob("*.csv")):
        a, b = rows(old), rows(after / old.name)
        keys = sorted({k for r in a + b for k in r if deterministic(k)})
        if len(a) != len(b):
            problems.append(f"{old.stem}: {len(a)} rows before, {len(b)} after")
            continue
        checked = 0
        for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
            for k in keys:
                if ra.get(k, "") != rb.get(k, ""):
                    problems.append(f"{old.stem} row {i} {k}: {ra.get(k)!r} before, {rb.get(k)!r} after")
                checked += bool(ra.get(k))
        print(f"{old.stem}: {len(a)} rows, {checked} values compared, {len(keys)} columns")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--record", type=Path, help="run the jobs and keep their metrics.csv here")
    group.add_argument("--compare", type=Path, help="run the jobs and compare with the files recorded here")
    args = ap.parse_args()
    if args.record:
        run_all(args.record)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        run_all(Path(tmp))
        problems = compare(args.compare, Path(tmp))
    print("\n".join(problems[:40]) if problems else "identical: every logged value except wall-clock timings")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

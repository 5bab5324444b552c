"""The audio adapter's alignment with and without ``stage.text_teacher`` (issue 26): held-out accuracy per task.

Per arm and seed: ``stage=align model=tiny_omni data=synthetic_omni data.tasks=[beeps,higher]`` (both adapters
training, encoders and LM frozen), then ``python -m r1v.eval`` on the first ``--limit`` held-out audio questions
(greedy) — beside the substitute LM handed each clip's text instead (the yardstick: the align stage should reach
≥ 0.8 × it). Arms: ``answer`` (the answer's loss only, at the learning rates listed) and ``teacher`` (+ the text
teacher's weight × the hidden-state distance). ``--threads`` runs each arm with that many torch threads too:
the float sums' order changes with it, which tells a stable alignment from a lucky one.

    python benchmarks/omni_align.py --seeds 0 1 --threads 1 2 --out benchmarks/results/omni_align.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

from _common import emit, train  # benchmarks/_common.py (scripts run as python benchmarks/<name>.py)

TASKS = ("beeps", "higher")
ARMS = {
    "answer lr 1e-2": ["stage.lr=1e-2"],
    "answer lr 2e-3": ["stage.lr=2e-3"],
    "teacher": ["stage.lr=1e-3", "stage.text_teacher=10", "stage.weight_decay=0"],
}


def held_out(run: Path, limit: int) -> dict[str, float]:
    """Greedy pass@1 per task on the first ``limit`` held-out audio questions (``python -m r1v.eval``)."""
    out = run / "eval"
    args = [f"checkpoint={run}", "benchmark=synthetic_omni", f"out={out}", f"limit={limit}",
            f"+benchmark_knobs.tasks=[{','.join(TASKS)}]"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "r1v.eval", *args], cwd=run.parent, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"eval failed: {proc.stderr[-2000:]}")
    per: dict[str, list[bool]] = {}
    for line in (out / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        per.setdefault(row["category"], []).append(bool(row["completions"][0]["correct"]))
    acc = {t: mean(v) for t, v in per.items()}
    return {**acc, "audio": mean(acc[t] for t in TASKS if t in acc)}


def yardstick(limit: int) -> dict[str, float]:
    """The substitute LM on the same questions with each clip's text instead of the clip."""
    from r1v.core.registry import get_registry
    from r1v.data.synthetic_omni import described, generate
    from r1v.evaluation.described import described_accuracy

    samples = [generate(i, "val", tasks=TASKS, render=False) for i in range(limit)]
    acc = described_accuracy(get_registry().build("backbone", "tiny_instruct_omni"), samples, described)
    return {**{t: acc[t] for t in TASKS}, "audio": acc["all"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    text = yardstick(args.limit)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            for seed in args.seeds:
                for threads in args.threads:
                    name = f"{arm.replace(' ', '_')}_s{seed}_t{threads}"
                    os.environ["OMP_NUM_THREADS"] = str(threads)
                    train(Path(tmp), "model=tiny_omni", "data=synthetic_omni", f"data.tasks=[{','.join(TASKS)}]",
                          "stage.trainable=[adapter,audio_adapter]", f"stage.max_steps={args.steps}",
                          f"stage.val_every={args.steps}", "stage.val_generate=0", "stage.ckpt_every=0",
                          f"seed={seed}", f"run={name}", *ARMS[arm])  # fmt: skip
                    acc = held_out(Path(tmp) / "runs" / name, args.limit)
                    runs.append({"arm": arm, "seed": seed, "threads": threads, **acc,
                                 "of_text": acc["audio"] / text["audio"]})  # fmt: skip
                    print(json.dumps(runs[-1]), flush=True)
    summary = {arm: {"audio_mean": mean(r["audio"] for r in runs if r["arm"] == arm),
                     "audio_min": min(r["audio"] for r in runs if r["arm"] == arm),
                     "of_text_min": min(r["of_text"] for r in runs if r["arm"] == arm)}
               for arm in args.arms}  # fmt: skip
    emit({"steps": args.steps, "limit": args.limit, "text_yardstick": text, "arms": ARMS, "runs": runs,
          "summary": summary}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()

"""Soak test of crash safety: a long CPU run killed with SIGKILL (``os._exit(137)``, no clean-up) at random moments
— before a step, after a step, inside a checkpoint write — and resumed with ``resume=auto`` each time, against an
uninterrupted run of the same seed. Exit 0 when the final weights are bit-identical and every logged loss equal.

    python benchmarks/soak.py --steps 1000 --kills 10 --seed 0

The kill points come from ``R1V_FAULT_INJECT`` (r1v/runtime/faults.py), drawn at random steps; a checkpoint every
``--ckpt-every`` steps gives the resumes something to go back to (steps after it are re-done, not duplicated).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QUIET

POINTS = ("before_step", "after_step", "in_checkpoint_write")


def run(cwd: Path, args: list[str], fault: str | None = None) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # one thread: sums in a fixed order
    if fault:
        env["R1V_FAULT_INJECT"] = fault
    return subprocess.run([sys.executable, "-m", "r1v.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True).returncode  # fmt: skip


def losses(run_dir: Path) -> dict[int, str]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--ckpt-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    ap.add_argument("--kill", action="append", default=[], help="point:step instead of random ones (repeatable)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    ckpt_steps = list(range(args.ckpt_every, args.steps, args.ckpt_every))
    kills = []
    for _ in range(args.kills):
        point = rng.choice(POINTS)
        step = rng.choice(ckpt_steps) if point == "in_checkpoint_write" else rng.randrange(1, args.steps)
        kills.append(f"{point}:{step}")
    kills = list(args.kill) or kills
    kills.sort(key=lambda k: int(k.split(":")[1]))
    common = [f"stage.max_steps={args.steps}", "stage.val_every=1000000", f"stage.ckpt_every={args.ckpt_every}",
              "stage.val_generate=0", *QUIET]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="r1v-soak-") as work:
        cwd = Path(work)
        t0 = time.perf_counter()
        assert run(cwd, ["run=straight", *common]) == 0, "the uninterrupted run failed"
        t1 = time.perf_counter()
        deaths = 0
        for k, fault in enumerate(kills):
            rc = run(cwd, ["run=soak", *common, *(["resume=auto"] if k else [])], fault)
            deaths += rc == 137
            print(f"  {fault}: exit {rc}", flush=True)
        rc = run(cwd, ["run=soak", *common, "resume=auto"])
        t2 = time.perf_counter()
        a, b = losses(cwd / "runs" / "straight"), losses(cwd / "runs" / "soak")
        wa = load_file(str(cwd / "runs" / "straight" / "final" / "trainable.safetensors"))
        wb = load_file(str(cwd / "runs" / "soak" / "final" / "trainable.safetensors"))
        same_losses = a == b and sorted(a) == list(range(args.steps))
        same_weights = wa.keys() == wb.keys() and all(wa[n].equal(wb[n]) for n in wa)
        steps_ok = sorted(a) == sorted(b) == list(range(args.steps))
        loss_gap = max((abs(float(a[k]) - float(b[k])) for k in a if k in b), default=float("inf"))
        first = min((k for k in a if a[k] != b.get(k)), default=None)
        weight_gap = max(float((wa[n] - wb[n]).abs().max()) for n in wa) if wa.keys() == wb.keys() else float("inf")
        print(f"soak: every step logged once: {steps_ok}; largest loss gap {loss_gap:.3g} (first different step: "
              f"{first}); largest weight gap {weight_gap:.3g}")  # fmt: skip
        print(f"soak: {args.steps} steps, {deaths} of {len(kills)} kills landed ({', '.join(kills)}); final exit {rc}; "
              f"losses equal at every step: {same_losses}; final weights bit-identical: {same_weights}; "
              f"uninterrupted {t1 - t0:.0f} s, killed-and-resumed {t2 - t1:.0f} s")  # fmt: skip
        return 0 if rc == 0 and same_losses and same_weights else 1


if __name__ == "__main__":
    sys.exit(main())

"""``recipe=r1v_omni`` per seed: held-out accuracy (synthetic_omni, 200 questions, greedy) after each stage on
audio-only (beeps, higher), video-only (moves) and mixed image + audio (beeps_vs_shapes) questions, mean ± std over
seeds, beside the text yardstick (the substitute and the reasoner LM handed each medium's text instead).

    python benchmarks/omni_recipe.py --seeds 0 1 2 --out benchmarks/results/omni_recipe.json   (≈ 8 min a seed, 2 cores)

Resumes: a seed whose recipe finished is read back from ``--work`` (default benchmarks/results/omni_runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean, stdev

KINDS = {"audio": ("beeps", "higher"), "video": ("moves",), "mixed": ("beeps_vs_shapes",)}


def by_kind(categories: dict[str, float]) -> dict[str, float]:
    """Per-task pass@1 -> per kind (tasks of a kind have equal question counts: the benchmark cycles tasks)."""
    return {k: mean(categories[t] for t in ts) for k, ts in KINDS.items() if all(t in categories for t in ts)}


def yardstick(n: int) -> dict[str, dict[str, float]]:
    """Accuracy (%) per kind of the omni substitute and reasoner LMs on the held-out questions as text."""
    from r1v.core.registry import get_registry
    from r1v.data.synthetic_omni import described, generate
    from r1v.evaluation.described import described_accuracy

    samples = [generate(i, "val") for i in range(n)]
    out = {}
    for name in ("tiny_instruct_omni", "tiny_reasoner_omni"):
        bb = get_registry().build("backbone", name)
        acc = described_accuracy(bb, samples, described, max_new_tokens=96 if bb.reasoning else 16)
        out[name] = by_kind({k: 100 * v for k, v in acc.items()}) | {"all": 100 * acc["all"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("benchmarks/results/omni_runs"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/omni_recipe.json"))
    ap.add_argument("extra", nargs="*", help="more python -m r1v.recipe overrides")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    for seed in args.seeds:
        state_path = args.work / "runs" / f"s{seed}" / "recipe.json"
        done = state_path.is_file() and all(
            s.get("status") == "done" for s in json.loads(state_path.read_text())["stages"].values()
        )
        if not done:
            cmd = [sys.executable, "-m", "r1v.recipe", "recipe=r1v_omni", f"seed={seed}", f"run=s{seed}",
                   *(["resume=auto"] if state_path.is_file() else []), *args.extra]  # fmt: skip
            proc = subprocess.run(cmd, cwd=args.work, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                                  text=True)  # fmt: skip
            if proc.returncode:
                raise SystemExit(f"seed {seed}: {proc.stderr[-3000:]}")
        state = json.loads(state_path.read_text())
        per_seed[seed] = {name: by_kind(s["eval"]["categories"]) | {"all": s["eval"]["pass@1"]}
                          for name, s in state["stages"].items() if s.get("eval")}  # fmt: skip
        print(f"seed {seed}: {json.dumps(per_seed[seed])}", flush=True)
    text = yardstick(200)
    stages = list(next(iter(per_seed.values())))
    cols = [*KINDS, "all"]
    summary = {st: {k: (mean(v), stdev(v) if len(v) > 1 else 0.0)
                    for k in cols if (v := [per_seed[s][st][k] for s in per_seed if k in per_seed[s].get(st, {})])}
               for st in stages}  # fmt: skip
    lines = [f"| stage | {' | '.join(cols)} |", f"|---|{'---|' * len(cols)}"]
    for st, row in summary.items():
        lines.append(f"| {st} | " + " | ".join(f"{row[k][0]:.1f} ± {row[k][1]:.1f}" if k in row else "–"
                                                for k in cols) + " |")  # fmt: skip
    for name, row in text.items():
        lines.append(f"| {name} on the text | " + " | ".join(f"{row.get(k, float('nan')):.1f}" for k in cols) + " |")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "seeds": args.seeds,
                "extra": args.extra,
                "per_seed": per_seed,
                "summary": summary,
                "text_yardstick": text,
                "table": lines,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()

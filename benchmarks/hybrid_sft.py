"""Held-out accuracy along R1V's hybrid optimisation on the tiny model, over several seeds.

Per seed, from the same start (align → reassemble onto the tiny reasoner):
plain SFT (stage 1), then iterative SFT (4 rounds, τ = 2, 3, 4, 5, error sets by generation), and as a
control, plain SFT continued for as many extra steps as the rounds took (does the selection matter,
or only the extra training?). Accuracy: greedy answers to ``--n-eval`` held-out synthetic questions.

    python benchmarks/hybrid_sft.py --seeds 0 1 2 --out benchmarks/results/hybrid_sft.json

About 3 minutes per seed on 2 CPU cores. Prints a Markdown table (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from _common import train  # benchmarks/_common.py (scripts run as python benchmarks/<name>.py)


def accuracy(weights: Path, n: int) -> float:
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from r1v.core.config import register_resolvers

    register_resolvers()
    from r1v.core.config import conf_dir
    from r1v.core.registry import get_registry
    from r1v.data.synthetic import generate
    from r1v.evaluation.answers import equivalent, extract_answer
    from r1v.model.build import build
    from r1v.model.load import load_trainable

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=["model=tiny_reasoner"]), resolve=True)
    model, processor = build(cfg["model"], get_registry())
    load_trainable(model, str(weights))
    model.eval()
    engine = get_registry().build("rollout", "hf")
    correct = 0
    with torch.no_grad():
        for start in range(0, n, 64):
            samples = [generate(i, "val")[0] for i in range(start, min(n, start + 64))]
            texts = engine.generate(model, processor, samples, 100, greedy=True)
            correct += sum(equivalent(extract_answer(t), s.answer) for t, s in zip(texts, samples, strict=True))
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    return correct / n


def one_seed(seed: int, work: Path, n_eval: int, pool: int) -> dict[str, float]:
    s = f"seed={seed}"
    train(work, "run=align", s)
    train(work, "stage=reassemble", "model=tiny_reasoner", "checkpoint=runs/align", "run=re", s)
    train(work, "stage=sft", "model=tiny_reasoner", "checkpoint=runs/re", "run=sft", s)
    train(work, "stage=iterative_sft", "model=tiny_reasoner", "checkpoint=runs/sft", "run=it", s,
          f"stage.errors.pool={pool}")  # fmt: skip
    state = json.loads((work / "runs/it/iterative.json").read_text())
    extra = sum(r["steps"] for r in state["rounds"])
    train(work, "stage=sft", "model=tiny_reasoner", "checkpoint=runs/re", "run=sft_long", s,
          f"stage.max_steps={200 + extra}")  # fmt: skip
    row = {"reassembled": accuracy(work / "runs/re", n_eval), "sft": accuracy(work / "runs/sft", n_eval)}
    for r in state["rounds"]:
        row[f"round{r['round']}"] = accuracy(Path(r["weights"]), n_eval)
        row[f"round{r['round']}_used"] = r["n_used"]
    row[f"sft_long(+{extra} steps)"] = accuracy(work / "runs/sft_long", n_eval)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--pool", type=int, default=1024, help="training samples checked for the error sets")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/hybrid_sft.json"))
    args = ap.parse_args()
    rows = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"r1v-hybrid-{seed}-") as tmp:
            rows[seed] = one_seed(seed, Path(tmp), args.n_eval, args.pool)
        print(f"seed {seed}: {rows[seed]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"n_eval": args.n_eval, "pool": args.pool, "per_seed": rows}, indent=2) + "\n")
    keys = [k for k in rows[args.seeds[0]] if not k.endswith("_used")]
    print(f"\n| stage | held-out accuracy (n={args.n_eval}), mean ± std over seeds {args.seeds} | per seed |")
    print("|---|---|---|")
    for k in keys:
        vals = [rows[s][k] for s in args.seeds if k in rows[s]]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        used = [rows[s].get(f"{k}_used") for s in args.seeds]
        note = f" (trained on {', '.join(str(u) for u in used)} samples)" if all(used) else ""
        print(f"| {k}{note} | {statistics.mean(vals):.3f} ± {sd:.3f} | {', '.join(f'{v:.3f}' for v in vals)} |")


if __name__ == "__main__":
    main()

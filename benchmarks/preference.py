"""R1V2's preference stages on the tiny model, per seed, from the same re-assembled start:

- MPO (``stage=mpo data=synthetic_pairs``, 400 steps, lr 2e-3): held-out implicit-reward margin and pair
  ranking accuracy (start: margin 0, the policy is the reference), and greedy accuracy on 64 held-out
  questions before and after;
- reward model (``stage=reward_model``, 300 steps, lr 1e-3): ranking accuracy on 128 held-out pairs
  (right vs plausible wrong answer; chance 0.5).

    python benchmarks/preference.py --seeds 0 1 2        (about 3.5 minutes per seed on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

from _common import train  # benchmarks/_common.py (scripts run as python benchmarks/<name>.py)


def last(run: Path, key: str) -> float:
    return [float(r[key]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get(key)][-1]


def greedy_accuracy(checkpoint: Path, n: int = 64) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from r1v.core.config import register_resolvers

    register_resolvers()
    from r1v.core.config import conf_dir, register_plugin_configs
    from r1v.core.registry import get_registry
    from r1v.model.load import inference_model
    from tests.conftest import held_out_accuracy

    register_plugin_configs(get_registry())
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("config", overrides=["model=tiny_reasoner", f"checkpoint={checkpoint}"])
    model, processor = inference_model(OmegaConf.to_container(cfg, resolve=True))
    return held_out_accuracy(model, processor, get_registry(), n=n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/preference.json"))
    args = ap.parse_args()
    rows = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"r1v-pref-{seed}-") as tmp:
            work = Path(tmp)
            s = f"seed={seed}"
            train(work, "run=align", s)
            train(work, "stage=reassemble", "model=tiny_reasoner", "checkpoint=runs/align", "run=re", s)
            train(work, "stage=mpo", "model=tiny_reasoner", "checkpoint=runs/re", "data=synthetic_pairs", "run=mpo", s,
                  "stage.lr=2e-3", "stage.max_steps=400", "stage.val_every=400", "stage.val_generate=0")  # fmt: skip
            train(work, "stage=reward_model", "model=tiny_reasoner", "checkpoint=runs/re", "data=synthetic_pairs",
                  "data.n_val=128", "run=rm", s, "stage.lr=1e-3", "stage.max_steps=300",
                  "stage.val_every=300")  # fmt: skip
            rows[seed] = {"mpo_val_margin": last(work / "runs/mpo", "val/margin"),
                          "mpo_val_pair_accuracy": last(work / "runs/mpo", "val/pair_accuracy"),
                          "accuracy_before": greedy_accuracy(work / "runs/re"),
                          "accuracy_after_mpo": greedy_accuracy(work / "runs/mpo"),
                          "rm_val_pair_accuracy": last(work / "runs/rm", "val/pair_accuracy")}  # fmt: skip
        print(f"seed {seed}: {rows[seed]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"per_seed": rows}, indent=2) + "\n")
    print(
        "\n| seed | MPO held-out margin | MPO pair accuracy | greedy accuracy before → after MPO | RM pair accuracy |"
    )
    print("|---|---|---|---|---|")
    for seed, r in rows.items():
        print(
            f"| {seed} | {r['mpo_val_margin']:.3f} | {r['mpo_val_pair_accuracy']:.3f} | "
            f"{r['accuracy_before']:.3f} → {r['accuracy_after_mpo']:.3f} | {r['rm_val_pair_accuracy']:.3f} |"
        )


if __name__ == "__main__":
    main()

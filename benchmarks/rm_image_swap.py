"""Does a trained reward model read the image? Score ``flaw_auc.py``'s held-out chains with their own images and
with every image swapped for the next question's: a reward model that checks the description against the
image scores a sound chain lower on the wrong image and loses its contradiction AUC; one that ignores the image
scores both the same.

    python benchmarks/flaw_auc.py --objective process --work runs/flaw-auc ...   # keeps runs/flaw-auc/runs/rm
    python benchmarks/rm_image_swap.py runs/flaw-auc/runs/rm --n 200
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit  # benchmarks/_common.py
from flaw_auc import auc, held_out_chains, score_held_out  # benchmarks/flaw_auc.py


def swapped(samples: list) -> list:
    """The same chains, each with the next question's image."""
    out = []
    for i, s in enumerate(samples):
        t = copy.copy(s)
        t.images = samples[(i + 1) % len(samples)].images
        out.append(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rm", type=Path, help="a stage=reward_model run folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=200, help="held-out questions")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON too")
    args = ap.parse_args()
    chains = held_out_chains(args.n, args.seed)
    result: dict[str, object] = {"rm": str(args.rm), "seed": args.seed, "held_out_questions": args.n}
    for name, chosen in (("own_images", chains), ("swapped_images", {k: swapped(v) for k, v in chains.items()})):
        raw = score_held_out(args.rm, chosen)
        result[name] = {"auc_raw": {k: round(auc(raw["none"], v), 4) for k, v in raw.items() if k != "none"},
                        "mean_raw": {k: round(sum(v) / len(v), 4) for k, v in raw.items()}}  # fmt: skip
    emit(result, args.out)


if __name__ == "__main__":
    main()

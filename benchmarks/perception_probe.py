"""How much of the scene can the tiny vision encoder's features tell, and what does that allow on the
``contradicts_image`` flaw of ``data=synthetic_hard``? (issue 27: is the contradiction AUC a perception limit?)

The reward model's vision encoder is frozen (``stage=reward_model``'s ``trainable: [adapter, backbone]``), so all
it can know of an image is in that encoder's features. A probe reads them: per cell of the 3×3 grid, one of 13
classes (empty, or one of 4 colours × 3 shapes), trained on ``--n-train`` training-split images and tested on
held-out ones (a linear probe and a one-hidden-layer MLP on the flattened ``[g, g, C]`` features). Then an
*ideal reader* — one that parses the chain's "I see …" description perfectly and checks every cell of it against
the probe's perception — scores each held-out chain by the probe's log-probability of the least plausible
described cell; its AUC of sound against contradicting chains (the held-out questions of ``flaw_auc.py``: the
``test`` split, same seed) is what this perception allows a reward model on the contradiction, given a perfect
text reader (a probe with more capacity could allow more: it is an estimate, not a proof).

    python benchmarks/perception_probe.py --n-train 4000 --n 300        (a few minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from flaw_auc import auc
from torch import nn


def cell_classes(scene: list) -> list[int]:
    """Per cell 0 (empty) or 1 + colour index · 3 + shape index."""
    from r1v.data.synthetic import COLORS, SHAPES

    out = [0] * 9
    for o in scene:
        out[o.cell] = 1 + list(COLORS).index(o.color) * len(SHAPES) + SHAPES.index(o.shape)
    return out


def described(chain: str) -> list:
    """The scene the chain's first sentence ("I see <colour> <shape> at <position>; ….") describes."""
    from r1v.data.synthetic import POSITIONS, Obj

    text = chain.split(". ", 1)[0].removeprefix("I see ").rstrip(".")
    objs = []
    for part in text.split("; "):
        color, shape, _, *pos = part.split(" ")
        objs.append(Obj(color, shape, POSITIONS.index(" ".join(pos))))
    return objs


@torch.no_grad()
def features(model, processor, samples) -> torch.Tensor:
    """``[N, g·g·C]``: the frozen vision encoder's output for each sample's image."""
    out = []
    for i in range(0, len(samples), 64):
        px = torch.cat([processor.encode(s, target=None)["pixel_values"] for s in samples[i : i + 64]])
        out.append(model.vision(px).flatten(1).float())
    return torch.cat(out)


def fit(probe: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """Adam on the summed per-cell cross-entropy, mini-batches of 256."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(256):
            loss = nn.functional.cross_entropy(probe(x[idx]).view(-1, 13), y[idx].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=4000, help="training-split images the probes learn from")
    ap.add_argument("--n", type=int, default=300, help="held-out questions (as flaw_auc.py's)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/perception_probe.json"))
    args = ap.parse_args()
    from r1v.core.config import compose
    from r1v.core.registry import get_registry
    from r1v.data.synthetic_hard import SyntheticHard
    from r1v.model.build import build

    t0 = time.time()
    torch.manual_seed(args.seed)
    model, processor = build(compose(["model=tiny_reasoner"])["model"], get_registry())
    model.eval()
    train, test = SyntheticHard(args.n_train, "train", args.seed), SyntheticHard(args.n, "test", args.seed)
    train_items = [train.item(i, force_flaw="none") for i in range(args.n_train)]
    x = features(model, processor, [train._sample(i, it) for i, it in enumerate(train_items)])
    y = torch.tensor([cell_classes(it.scene) for it in train_items])
    sound = [test.item(i, force_flaw="none") for i in range(args.n)]
    bad = [test.item(i, force_flaw="contradicts_image") for i in range(args.n)]
    xt = features(model, processor, [test._sample(i, it) for i, it in enumerate(sound)])  # same images
    yt = torch.tensor([cell_classes(it.scene) for it in sound])
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xt = (x - mean) / std, (xt - mean) / std
    d = x.shape[1]
    probes = {"linear": nn.Linear(d, 9 * 13),
              "mlp": nn.Sequential(nn.Linear(d, 512), nn.GELU(), nn.Linear(512, 9 * 13))}  # fmt: skip
    result: dict[str, object] = {"seed": args.seed, "n_train": args.n_train, "held_out_questions": args.n,
                                 "feature_dim": d, "probes": {}}  # fmt: skip
    for name, probe in probes.items():
        fit(probe, x, y, args.epochs, args.seed)
        with torch.no_grad():
            logp = probe(xt).view(-1, 9, 13).log_softmax(-1)  # [N, 9, 13]
        pred = logp.argmax(-1)
        occupied = yt > 0
        same = pred == yt
        colour = ((pred - 1) // 3 == (yt - 1) // 3) & (pred > 0)
        shape = ((pred - 1) % 3 == (yt - 1) % 3) & (pred > 0)

        def reader(chain: str, i: int, lp: torch.Tensor = logp) -> float:  # the least plausible described cell
            cls = torch.tensor(cell_classes(described(chain)))
            return float(lp[i, torch.arange(9), cls].min())

        pairs = list(zip(sound, bad, strict=True))
        ghost_cell = [next(o.cell for o in described(b.chain) if o not in s.scene) for s, b in pairs]
        ghost_cls = [cell_classes(described(b.chain))[c] for (_, b), c in zip(pairs, ghost_cell, strict=True)]
        misread = [int(pred[i, c] != g) for i, (c, g) in enumerate(zip(ghost_cell, ghost_cls, strict=True))]
        result["probes"][name] = {  # type: ignore[index]
            "cell_accuracy": round(float(same.float().mean()), 4),
            "empty_vs_occupied": round(float(((pred > 0) == occupied).float().mean()), 4),
            "colour_if_occupied": round(float(colour[occupied].float().mean()), 4),
            "shape_if_occupied": round(float(shape[occupied].float().mean()), 4),
            "scene_all_cells_right": round(float(same.all(1).float().mean()), 4),
            "ghost_cell_right": round(sum(int(pred[i, c] == yt[i, c]) for i, c in enumerate(ghost_cell)) / args.n, 4),
            "ghost_cell_not_read_as_ghost": round(sum(misread) / args.n, 4),
            "ideal_reader_contradicts_auc": round(auc([reader(s.chain, i) for i, s in enumerate(sound)],
                                                      [reader(b.chain, i) for i, b in enumerate(bad)]), 4),
        }  # fmt: skip
    result["wall_s"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Pre-train the embedded tiny parts on the synthetic task family, deterministically.

    python tools/pretrain_tiny.py    # writes tokenizer.json, *.safetensors, MANIFEST.json in r1v/model/parts/tiny/
    python tools/pretrain_tiny.py --only internvit   # just internvit.safetensors + internvit.json
    python tools/pretrain_tiny.py --only audio omni  # the omni parts (tools/pretrain_omni.py) + omni.json

Mirrors R1V's ingredients at toy scale:
  * a vision encoder whose features carry colour, shape and position (trained to classify the
    contents of each cell of the 3×3 grid from its patch features); a tiny InternViT trained the same
    way is the optional part that makes the tiny model exportable as InternVL-chat (model=tiny_internvl);
  * an "instruct" LM (the alignment substitute): ``<img>scene text</img>`` + question → ``\\boxed{answer}``;
  * a "reasoner" LM (the R1-distill stand-in): the same prompt pre-filled with ``<think>\\n`` →
    worked reasoning → ``</think>`` → ``\\boxed{answer}``.
Both LMs share one byte-level BPE tokenizer that already holds the image and chat special tokens.
Deterministic for a given torch version and thread count (seeded, single data order).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "tools")]

from lm_loop import answer_text, lm_examples, save_lm, train_lm  # noqa: E402  (tools/)

from r1v.core.interfaces import IMG_CONTEXT, IMG_END, IMG_START, THINK_CLOSE, THINK_OPEN  # noqa: E402
from r1v.data import synthetic  # noqa: E402
from r1v.data.images import preprocess  # noqa: E402
from r1v.model.parts import tiny  # noqa: E402
from r1v.runtime.weights import to_cpu_contiguous  # noqa: E402

OUT = tiny.HERE
DEFAULT_PARTS = ["tokenizer", "vision", "instruct", "reasoner"]  # the default model's, pinned by MANIFEST.json
OPTIONAL_PARTS = ["internvit", "audio", "omni"]  # each with its own provenance file
CLASSES = [None] + [(c, s) for c in synthetic.COLORS for s in synthetic.SHAPES]  # 13 cell classes


def lm_texts(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(scene text, question, reasoning/answer...) rows for LM training."""
    rows = []
    for i in range(n):
        rng = random.Random(f"lm/{seed}/{i}")
        scene = synthetic.random_scene(rng)
        q, why, ans = synthetic.make_question(scene, synthetic.TASKS[i % len(synthetic.TASKS)], rng)
        rows.append((synthetic.describe(scene), q, why, ans))
    return rows


def build_tokenizer(rows) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [*tiny.SPECIAL_TOKENS.values(), *tiny.ROLE_TOKENS, THINK_OPEN, THINK_CLOSE, IMG_START, IMG_END,
                IMG_CONTEXT]  # fmt: skip
    trainer = trainers.BpeTrainer(vocab_size=640, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    corpus = [f"{d} {q} {w} {answer_text(a)} The answer is" for d, q, w, a in rows]
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(OUT / "tokenizer.json"))


def train_cell_classifier(enc: torch.nn.Module, steps: int, batch: int, seed: int, label: str) -> None:
    """Train ``enc`` (pixels -> (B,g,g,C) patch grid) to classify the contents of each of the 3×3 cells
    (empty or one of 12 colour-shape pairs) from its pooled patch features; the linear head is thrown away."""
    head = torch.nn.Linear(enc.hidden_size, len(CLASSES))
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        xs, ys = [], []
        for b in range(batch):
            sample, scene = synthetic.generate(step * batch + b, "train", seed=1000 + seed)
            xs.append(preprocess(sample.images[0], enc.image_size))
            y = torch.zeros(9, dtype=torch.long)
            for o in scene:
                y[o.cell] = CLASSES.index((o.color, o.shape))
            ys.append(y)
        x, y = torch.cat(xs), torch.stack(ys)
        feats = enc(x)  # (B,g,g,C)
        cells = F.adaptive_avg_pool2d(feats.permute(0, 3, 1, 2), 3)  # (B,C,3,3)
        logits = head(cells.flatten(2).transpose(1, 2))  # (B,9,13)
        loss = F.cross_entropy(logits.reshape(-1, len(CLASSES)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            acc = (logits.argmax(-1) == y).float().mean().item()
            print(f"{label} step {step} loss {loss.item():.3f} cell-acc {acc:.3f}", flush=True)
    assert enc.grid_size**2 == 64


def pretrain_vision(steps: int, batch: int, seed: int) -> None:
    from r1v.model.parts.timm_vit import tiny as tiny_vision

    torch.manual_seed(seed)
    enc = tiny_vision(pretrained=None)
    train_cell_classifier(enc, steps, batch, seed, "vision")
    from safetensors.torch import save_file

    save_file(to_cpu_contiguous(enc.state_dict()), str(OUT / tiny.WEIGHTS["vision"]))


def pretrain_internvit(steps: int, batch: int, seed: int, threads: int) -> None:
    """The tiny InternViT, trained as the tiny ViT is; written with its own provenance file (internvit.json)."""
    from r1v.model.parts.internvit import internvit_tiny_pretrained

    torch.manual_seed(seed)
    enc = internvit_tiny_pretrained(pretrained=None)
    train_cell_classifier(enc, steps, batch, seed, "internvit")
    from safetensors.torch import save_file

    save_file(to_cpu_contiguous(enc.state_dict()), str(OUT / tiny.INTERNVIT_WEIGHTS))
    manifest = {
        "command": f"python tools/pretrain_tiny.py --only internvit --seed {seed} --internvit-steps {steps} "
                   f"--threads {threads}",
        "torch": torch.__version__, "threads": threads,
        "sha256": {tiny.INTERNVIT_WEIGHTS: tiny.sha256(OUT / tiny.INTERNVIT_WEIGHTS)},
    }  # fmt: skip
    (OUT / tiny.INTERNVIT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


def pretrain_lm(variant: str, rows, steps: int, batch: int, seed: int) -> None:
    from r1v.model.parts.backbones import tiny_lm

    torch.manual_seed(seed)
    bb = tiny_lm(variant, pretrained=None)
    examples = lm_examples(bb, [(f"{IMG_START}{d}{IMG_END}\n{q}", why, ans) for d, q, why, ans in rows])
    train_lm(bb.model, bb.tokenizer, examples, steps, batch, 3e-3, seed, variant)
    save_lm(bb.model, OUT / tiny.WEIGHTS[variant])


def pretrain_omni_parts(args: argparse.Namespace, only: set[str]) -> None:
    """The tiny Whisper encoder and/or the omni LMs (tools/pretrain_omni.py), recorded in omni.json."""
    import pretrain_omni

    hashes = {}
    if "audio" in only:
        hashes.update(pretrain_omni.pretrain_audio(args.audio_steps, 64, args.seed))
    if "omni" in only:
        rows = lm_texts(20000, args.seed)  # the image rows the shipped LMs saw, kept in the mix
        for variant in ("instruct", "reasoner"):
            pretrain_omni.pretrain_omni_lm(variant, rows, args.omni_steps, 64, args.seed)
            name = tiny.OMNI_WEIGHTS[f"{variant}_omni"]
            hashes[name] = tiny.sha256(OUT / name)
    parts = sorted(only & {"audio", "omni"})
    steps = {"audio": f"--audio-steps {args.audio_steps}", "omni": f"--omni-steps {args.omni_steps}"}
    command = (f"python tools/pretrain_tiny.py --only {' '.join(parts)} --seed {args.seed} "
               f"{' '.join(steps[p] for p in parts)} --threads {args.threads}")  # fmt: skip
    pretrain_omni.write_manifest(parts, command, hashes, args.threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vision-steps", type=int, default=1500)
    ap.add_argument("--lm-steps", type=int, default=3000, help="instruct LM steps")
    ap.add_argument("--reasoner-steps", type=int, default=2500, help="reasoner LM steps (longer sequences)")
    ap.add_argument("--internvit-steps", type=int, default=400, help="tiny InternViT steps")
    ap.add_argument("--audio-steps", type=int, default=800, help="tiny Whisper encoder steps")
    ap.add_argument("--omni-steps", type=int, default=600, help="steps of each omni LM on top of the shipped one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=[*DEFAULT_PARTS, *OPTIONAL_PARTS], nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only or [*DEFAULT_PARTS, *OPTIONAL_PARTS])
    if "internvit" in only:  # its own file and manifest: the default parts' MANIFEST.json is not touched
        pretrain_internvit(args.internvit_steps, 64, args.seed, args.threads)
    if only & {"audio", "omni"}:  # the omni parts: their own files and omni.json (after the default LMs they extend)
        pretrain_omni_parts(args, only)
    if not only & set(DEFAULT_PARTS):
        return
    rows = lm_texts(40000, args.seed)
    if "tokenizer" in only:
        build_tokenizer(rows[:20000])  # the shipped tokenizer saw the first 20k rows
    if "vision" in only:
        pretrain_vision(args.vision_steps, 64, args.seed)
    if "instruct" in only:
        pretrain_lm("instruct", rows, args.lm_steps, 64, args.seed)
    if "reasoner" in only:
        pretrain_lm("reasoner", rows, args.reasoner_steps, 64, args.seed)
    files = ["tokenizer.json", *tiny.WEIGHTS.values()]
    manifest = {
        # The full command (--only regenerates a subset with the same result for those files).
        "command": f"python tools/pretrain_tiny.py --seed {args.seed} --vision-steps {args.vision_steps} "
                   f"--lm-steps {args.lm_steps} --reasoner-steps {args.reasoner_steps} --threads {args.threads}",
        "torch": torch.__version__, "threads": args.threads,
        "sha256": {f: tiny.sha256(OUT / f) for f in files if (OUT / f).exists()},
    }  # fmt: skip
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()

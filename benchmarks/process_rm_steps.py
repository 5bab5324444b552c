"""Where does a process reward model (``stage.objective=process``) see the flaw? Its step scores on
``flaw_auc.py``'s held-out chains, by kind of step (the description, a "That makes N." count, a sum, a loop
sentence, the rest) and label, and per kind of step the AUC of the sound steps of sound chains against the flawed
ones — the miscounts and wrong sums of ``wrong_steps`` chains, the contradicting description (or its one wrong
clause, with ``stage.head.step_unit=clause``) of ``contradicts_image`` ones.

    python benchmarks/process_rm_steps.py <rm run> --n 150
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from _common import emit  # benchmarks/_common.py
from flaw_auc import auc  # benchmarks/flaw_auc.py


def step_kind(text: str, in_description: bool) -> str:
    if in_description:
        return "description"
    if text.startswith("That makes"):
        return "count"
    if "=" in text:
        return "sum"
    return "loop" if text.startswith(("Wait", "So the")) else "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rm", type=Path, help="a stage=reward_model run folder trained with stage.objective=process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=150, help="held-out questions")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from r1v.core.interfaces import THINK_CLOSE
    from r1v.data.processor import boxed
    from r1v.data.steps import step_spans
    from r1v.data.synthetic_hard import FLAWS, SyntheticHard, step_labels
    from r1v.rl.grpo import completion_rows
    from r1v.rl.process import step_batch
    from r1v.stages.reward_model import LoadedRewardModel, _hidden, token_scores

    rm = LoadedRewardModel(args.rm)
    tok, data = rm.processor.tokenizer, SyntheticHard(args.n, "test", args.seed)
    steps: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for flaw in ("none", *FLAWS):
        items = [data.item(i, force_flaw=flaw) for i in range(args.n)]
        for i0 in range(0, args.n, 16):
            its = items[i0 : i0 + 16]
            samples = [data._sample(i0 + k, it) for k, it in enumerate(its)]
            texts = [f"{s.reasoning}\n{THINK_CLOSE}\n\n{boxed(s.answer)}" for s in samples]
            labels = [[[a, b, int(ok)] for a, b, ok in step_labels(it.steps)] for it in its]
            encs = [rm.processor.encode(s, target=None) for s in samples]
            comp = [tok(c + tok.eos_token, add_special_tokens=False)["input_ids"] for c in texts]
            ids, attn, cmask = completion_rows([e["input_ids"] for e in encs], comp, tok.pad_token_id)
            px = torch.cat([e["pixel_values"] for e in encs])
            mask, targets = step_batch(tok, texts, cmask.shape[1], labels, rm.unit)
            with torch.no_grad():
                s = token_scores(rm.model, _hidden(rm.model, ids, attn, px), cmask.shape[1])
            for b, it in enumerate(its):
                described = it.chain.index(". ") + 1  # the description is the first sentence
                ends = mask[b].nonzero().flatten().tolist()
                for (a, e), j in zip(step_spans(it.chain, rm.unit), ends, strict=False):
                    kind = step_kind(it.chain[a:e], e <= described)
                    steps[(flaw, kind, int(targets[b, j]))].append(float(s[b, j]))
    result: dict[str, object] = {"rm": str(args.rm), "unit": rm.unit, "held_out_questions": args.n}
    result["mean_step_score"] = {f"{f}/{k}/{'sound' if ok else 'flawed'}": [len(v), round(sum(v) / len(v), 3)]
                                 for (f, k, ok), v in sorted(steps.items())}  # fmt: skip
    sound = {k: [v for (f, kk, ok), vs in steps.items() if f == "none" and kk == k and ok for v in vs]
             for k in ("count", "sum", "description")}  # fmt: skip
    result["step_auc"] = {
        "count (wrong_steps)": round(auc(sound["count"], steps[("wrong_steps", "count", 0)]), 4),
        "sum (wrong_steps)": round(auc(sound["sum"], steps[("wrong_steps", "sum", 0)]), 4),
        "description (contradicts_image)": round(auc(sound["description"], steps[("contradicts_image",
                                                                                   "description", 0)]), 4),
    }  # fmt: skip
    emit(result, args.out)


if __name__ == "__main__":
    main()

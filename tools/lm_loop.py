"""The tiny LMs' supervised loop, shared by tools/pretrain_tiny.py (the default LMs) and tools/pretrain_omni.py (the
omni LMs on top of them): chat-formatted examples with the prompt masked, a seeded sampling order, AdamW with a
one-cycle schedule. Imported by both (pretrain_tiny imports pretrain_omni, never the reverse), imports neither.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from r1v.core.interfaces import THINK_CLOSE
from r1v.runtime.weights import to_cpu_contiguous


def answer_text(answer: str) -> str:
    return f"\\boxed{{{answer}}}"


def lm_examples(bb, rows) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per (user text, reasoning, answer) row for backbone ``bb``: the chat prompt (labels -100),
    then the completion (``reasoning </think>`` first for a reasoner), ``\\boxed{answer}`` and EOS."""
    tok, examples = bb.tokenizer, []
    for user, why, ans in rows:
        prompt = tok.apply_chat_template([{"role": "user", "content": user}], chat_template=bb.chat_template,
                                         tokenize=False, add_generation_prompt=True)  # fmt: skip
        completion = (f"{why}\n{THINK_CLOSE}\n\n" if bb.reasoning else "") + answer_text(ans) + tok.eos_token
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"]
        examples.append((p + c, [-100] * len(p) + c))
    return examples


def train_lm(model, tok, examples, steps: int, batch: int, lr: float, seed: int, label: str) -> None:
    """``steps`` steps of ``batch`` examples drawn (with replacement) in the order ``random.Random(seed)`` gives,
    right-padded; AdamW at one-cycle ``lr``, gradients clipped to norm 1. Logs every 100 steps and the last."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    order = random.Random(seed)
    model.train()
    for step in range(steps):
        chunk = [examples[order.randrange(len(examples))] for _ in range(batch)]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((batch, width), tok.pad_token_id)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros(batch, width, dtype=torch.long)
        for b, (x, y) in enumerate(chunk):
            ids[b, : len(x)], labels[b, : len(y)], mask[b, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"{label} step {step} loss {loss.item():.4f}", flush=True)


def save_lm(model, path: Path) -> None:
    """The LM's weights as safetensors, without ``lm_head.weight`` (tied to the embeddings)."""
    from safetensors.torch import save_file

    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(to_cpu_contiguous(state), str(path))

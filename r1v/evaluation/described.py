"""The text yardstick of an alignment: a language model answering with each medium's text in place of the medium.

R1V aligns an adapter so that the substitute LM reads the encoder's tokens as it would read a description of the
input. How well the LM answers when handed that description exactly is the ceiling of what the adapter can give
it; an aligned model is judged against it ("held-out accuracy ≥ 80% of the substitute's on the text").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from r1v.core.interfaces import LanguageBackbone, Sample
from r1v.evaluation.answers import equivalent, extract_answer


@torch.no_grad()
def described_accuracy(backbone: LanguageBackbone, samples: Sequence[Sample], text: Callable[[Sample], str],
                       max_new_tokens: int = 16, batch_size: int = 32) -> dict[str, float]:  # fmt: skip
    """Greedy accuracy of ``backbone`` on ``text(sample)`` (the question with its media as text), per
    ``sample.meta["task"]`` and over all (key ``all``)."""
    tok, model = backbone.tokenizer, backbone.model
    was_training, side = model.training, tok.padding_side
    model.eval()
    tok.padding_side = "left"  # generation continues every row from its last prompt token
    hits: dict[str, list[bool]] = defaultdict(list)
    try:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            prompts = [tok.apply_chat_template([{"role": "user", "content": text(s)}], tokenize=False,
                                               chat_template=backbone.chat_template, add_generation_prompt=True)
                       for s in chunk]  # fmt: skip
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)  # fmt: skip
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for s, t in zip(chunk, texts, strict=True):
                ok = equivalent(extract_answer(t), s.answer)
                hits[str(s.meta.get("task", "all"))].append(ok)
                hits["all"].append(ok)
    finally:
        model.train(was_training)
        tok.padding_side = side
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}

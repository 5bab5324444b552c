"""GRPO's padding-free log-probs (``stage.packing=true``, r1v/rl/packed.py) equal the padded rows' log-probs,
entropies and gradients, with images and completions of very different lengths in one micro-batch."""

from __future__ import annotations

import re

import pytest
import torch

from r1v.data.synthetic import generate
from r1v.model import varlen
from r1v.model.build import apply_freeze, build
from r1v.rl.grpo import completion_rows, token_logprobs
from r1v.rl.packed import packed_rows, packed_token_logprobs


def test_packed_rows_layout_by_hand():
    p = packed_rows([[1, 2], [3]], [[4, 5, 6], [7]])
    assert p.input_ids.tolist() == [[1, 2, 4, 5, 6, 3, 7]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    assert p.lengths == [5, 2]
    assert p.predictors.tolist() == [1, 2, 3, 5]  # the token before each completion token
    assert p.targets.tolist() == [4, 5, 6, 7]
    assert list(zip(p.rows.tolist(), p.cols.tolist(), strict=True)) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    with pytest.raises(ValueError, match="sequence 1 has an empty prompt"):
        packed_rows([[1], []], [[2], [3]])


def test_packed_logprobs_equal_the_padded_rows(registry, compose):
    torch.manual_seed(0)
    model, processor = build(compose()["model"], registry)
    apply_freeze(model, ["adapter", "backbone"])
    varlen.register()
    model.backbone.config._attn_implementation = varlen.NAME  # what stage.packing switches an SDPA backbone to
    samples = [generate(i, "val")[0] for i in range(3)]
    prompts = [processor.encode(s, target=None)["input_ids"] for s in samples]
    gen = torch.Generator().manual_seed(1)
    vocab = processor.tokenizer.vocab_size
    completions = [torch.randint(5, vocab, (n,), generator=gen).tolist() for n in (2, 23, 9)]
    pixels = torch.cat([processor.visuals(s)[1] for s in samples])
    ids, attn, cmask = completion_rows(prompts, completions, processor.tokenizer.pad_token_id)
    weights = torch.linspace(-1, 1, cmask.numel()).view_as(cmask) * cmask  # a signed upstream gradient per token

    padded, ent = token_logprobs(model, ids, attn, pixels, cmask.shape[1], chunk=7, with_entropy=True)
    (padded * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    packed, pent = packed_token_logprobs(model, packed_rows(prompts, completions), pixels, *cmask.shape, chunk=7,
                                         with_entropy=True)  # fmt: skip
    (packed * weights).sum().backward()

    assert packed.shape == cmask.shape == (3, 23)
    assert torch.equal(packed[cmask == 0], torch.zeros(int((cmask == 0).sum())))
    torch.testing.assert_close(packed[cmask == 1], padded[cmask == 1], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(pent[cmask == 1], ent[cmask == 1], atol=2e-4, rtol=1e-4)
    assert grads and grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert (p.grad - grads[n]).norm() <= 1e-4 * grads[n].norm() + 1e-8, n


def test_packed_rows_refuse_an_attention_that_would_mix_the_sequences(tiny_vlm):
    model, _ = tiny_vlm  # its backbone attends with SDPA: packed sequences would see each other
    with pytest.raises(
        ValueError, match=re.escape("stage.packing=true needs the backbone's attention to be 'r1v_varlen'")
    ):
        packed_token_logprobs(model, packed_rows([[1, 2]], [[3]]), None, 1, 1)

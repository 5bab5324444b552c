"""rollout=static (r1v.generation) against the reference engine and against the sampling rules, on the CPU.

The engine's graph path is exercised on the GPU (tests/gpu/test_static_engine_gpu.py and the benchmark);
here the same step function runs eagerly.
"""

from __future__ import annotations

import pytest
import torch

from r1v.data.synthetic import generate
from r1v.generation import Decoder, UnsupportedModelError
from r1v.generation.sampling import Knobs, choose, penalise, top_p_bisect, top_p_filter
from tests.unit.nucleus import assert_follows_nucleus


def _val(i: int):
    return generate(i, "val")[0]


@pytest.fixture(scope="module")
def trained_vlm(sft_run, registry, compose):
    """The SFT-trained tiny reasoner (real <think> chains, EOS at different lengths per sample)."""
    from r1v.model.build import build
    from r1v.model.load import load_trainable

    model, processor = build(compose("model=tiny_reasoner")["model"], registry)
    load_trainable(model, str(sft_run))
    return model.eval(), processor


def test_greedy_matches_hf_engine_token_for_token(registry, trained_vlm, one_thread):
    """Greedy: identical ids to transformers' generate, images spliced, prompts of different lengths,
    rows ending at EOS at different steps (the trained model) and rows cut at the budget."""
    model, processor = trained_vlm
    samples = [_val(i) for i in range(6)]
    lengths = {len(processor.encode(s, target=None)["input_ids"]) for s in samples}
    assert len(lengths) > 1  # left padding is exercised
    ref = registry.build("rollout", "hf").generate_ids(model, processor, samples, 48, greedy=True)
    ours = registry.build("rollout", "static").generate_ids(model, processor, samples, 48, greedy=True)
    eos = processor.tokenizer.eos_token_id
    assert any(r[-1] == eos for r in ref) and len({len(r) for r in ref}) > 1
    assert ours == ref
    short = registry.build("rollout", "static").generate_ids(model, processor, samples, 5, greedy=True)
    assert short == [r[:5] for r in ref]  # cut at the budget: no EOS appended


def test_the_image_placeholder_is_never_generated(registry, compose, one_thread):
    """A rollout holding <IMG_CONTEXT> cannot be scored (re-embedding finds an image slot too many: seen with
    random weights on the H200). With the LM head pushed towards it, it would be every greedy and most sampled
    tokens; both engines suppress it, agree greedily, and the sampled completions embed again."""
    from r1v.model.build import build

    torch.manual_seed(0)
    model, processor = build(compose("model=tiny_reasoner")["model"], registry)
    ctx = model.img_context_id
    samples = [_val(i) for i in range(3)]
    ids = processor.collate([processor.encode(s, target=None) for s in samples], padding_side="left")
    with torch.no_grad():  # the placeholder's head row along the prompts' last hidden state: its logit wins
        h = model.hidden_states(ids["input_ids"], ids["attention_mask"], ids["pixel_values"])[:, -1].mean(0)
        head = model.backbone.get_output_embeddings().weight
        head[ctx] = 50 * head.norm(dim=1).max() * h / h.norm()
    logits = model(ids["input_ids"], ids["attention_mask"], ids["pixel_values"]).logits[:, -1]
    assert (logits.argmax(-1) == ctx).all()  # without the suppression it would be chosen
    ref = registry.build("rollout", "hf").generate_ids(model, processor, samples, 12, greedy=True)
    ours = registry.build("rollout", "static").generate_ids(model, processor, samples, 12, greedy=True)
    assert ours == ref and all(ctx not in row for row in ours)
    torch.manual_seed(0)
    sampled = registry.build("rollout", "static", temperature=1.0, top_p=1.0).generate_ids(model, processor,
                                                                                           samples, 12)  # fmt: skip
    assert all(ctx not in row for row in sampled)
    from r1v.rl.grpo import completion_rows

    prompts = [processor.encode(s, target=None)["input_ids"] for s in samples]
    rows, attn, _ = completion_rows([list(p) for p in prompts], sampled, processor.tokenizer.pad_token_id)
    assert model.hidden_states(rows, attn, ids["pixel_values"]).shape[:2] == rows.shape


def test_greedy_matches_hf_engine_with_per_sample_penalty(registry, tiny_vlm, one_thread):
    """The untrained tiny model repeats itself, so a penalty of 2 changes its text; row i must follow
    its own P exactly as the reference engine's per-sample processor does."""
    model, processor = tiny_vlm
    samples = [_val(i) for i in range(4)]
    params = [{"repetition_penalty": 1.0}, {"repetition_penalty": 2.0}, {}, {"repetition_penalty": 1.5}]
    ref = registry.build("rollout", "hf").generate_ids(model, processor, samples, 24, greedy=True,
                                                       sample_params=params)  # fmt: skip
    ours = registry.build("rollout", "static").generate_ids(model, processor, samples, 24, greedy=True,
                                                            sample_params=params)  # fmt: skip
    plain = registry.build("rollout", "static").generate_ids(model, processor, samples, 24, greedy=True)
    assert ours == ref
    assert ours[1] != plain[1] and ours[0] == plain[0]


def test_fused_projections_give_the_same_ids(registry, trained_vlm, one_thread):
    """fuse=True: one GEMM for q|k|v and gate|up from a copy refreshed every call (an update in between shows)."""
    model, processor = trained_vlm
    samples = [_val(i) for i in range(4)]
    plain = registry.build("rollout", "static").generate_ids(model, processor, samples, 32, greedy=True)
    engine = registry.build("rollout", "static", fuse=True)
    assert engine.generate_ids(model, processor, samples, 32, greedy=True) == plain
    w = model.backbone.model.layers[0].mlp.up_proj.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(4.0)  # in place, as an optimizer step
        changed = registry.build("rollout", "static").generate_ids(model, processor, samples, 32, greedy=True)
        assert changed != plain
        assert engine.generate_ids(model, processor, samples, 32, greedy=True) == changed
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_batch_split_gives_the_same_ids(registry, trained_vlm, one_thread):
    model, processor = trained_vlm
    samples = [_val(i) for i in range(5)]
    whole = registry.build("rollout", "static").generate_ids(model, processor, samples, 32, greedy=True)
    split = registry.build("rollout", "static", max_batch_size=2).generate_ids(model, processor, samples, 32,
                                                                               greedy=True)  # fmt: skip
    assert split == whole


def test_sampled_rollouts_are_reproducible_and_varied(registry, trained_vlm, one_thread):
    model, processor = trained_vlm
    engine = registry.build("rollout", "static", temperature=1.0, top_p=1.0)
    samples = [_val(0)] * 8
    torch.manual_seed(3)
    a = engine.generate_ids(model, processor, samples, 40)
    torch.manual_seed(3)
    b = engine.generate_ids(model, processor, samples, 40)
    assert a == b
    assert len({tuple(r) for r in a}) > 1  # 8 draws of one prompt are not all the same
    eos = processor.tokenizer.eos_token_id
    assert all(eos not in r[:-1] for r in a)  # nothing after EOS


def test_sample_params_are_checked(registry, tiny_vlm):
    model, processor = tiny_vlm
    engine = registry.build("rollout", "static")
    samples = [_val(i) for i in range(2)]
    with pytest.raises(ValueError, match="sample_params has 1 entries for 2 samples"):
        engine.generate_ids(model, processor, samples, 4, sample_params=[{}])
    with pytest.raises(ValueError, match=r"cannot set 'top_k' per sample .*repetition_penalty, temperature, top_p"):
        engine.generate_ids(model, processor, samples, 4, sample_params=[{}, {"top_k": 3}])
    with pytest.raises(ValueError, match="temperature=0 is out of range"):
        registry.build("rollout", "static", temperature=0)


def test_unsupported_backbones_are_refused_in_one_line():
    from transformers import GPT2Config, GPT2LMHeadModel

    lm = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="the backbone is 'gpt2': use rollout=hf"):
        Decoder(lm)


def test_qwen3_style_qk_norm_matches_transformers(one_thread):
    """Per-head q/k RMSNorm (Qwen3) and bias-free projections: prefill logits equal HF's forward."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128)  # fmt: skip
    lm = Qwen3ForCausalLM(cfg).eval()
    ids = torch.randint(3, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    ref = lm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    from r1v.generation import StaticEngine

    eng = StaticEngine()
    dec = eng.decoder(lm)
    st = eng._buffers(dec, 2, 12, 3, ids.device)
    h = eng._prefill(dec, st, lm.model.embed_tokens(ids), mask)
    torch.testing.assert_close(dec.logits(h), ref.float(), atol=1e-5, rtol=1e-5)


# -- sampling rules -----------------------------------------------------------------------------------------------


def test_top_p_keeps_the_nucleus_like_transformers():
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    for p in (0.1, 0.5, 0.9, 0.99):
        ref = TopPLogitsWarper(p)(None, logits.clone())
        ours = top_p_filter(logits.clone(), torch.full((6,), p))
        assert torch.equal(ours.isinf(), ref.isinf()), p
    mixed = top_p_filter(logits.clone(), torch.tensor([0.1, 0.9, 0.1, 0.9, 0.5, 0.5]))
    for row, p in enumerate([0.1, 0.9, 0.1, 0.9, 0.5, 0.5]):
        assert torch.equal(mixed[row].isinf(), TopPLogitsWarper(p)(None, logits[row : row + 1].clone())[0].isinf())


def test_bisected_top_p_keeps_the_sorted_nucleus():
    """The sort-free threshold search keeps the same tokens as the sort, except where the mass above the
    boundary token is within float32 summation error of p (the two sum in different orders)."""
    torch.manual_seed(0)
    differing = 0
    for scale in (0.5, 1.0, 3.0, 10.0, 30.0):
        logits = torch.randn(64, 5000) * scale
        for p in (0.1, 0.5, 0.9, 0.95, 0.999):
            top = torch.full((64,), p)
            a, b = top_p_filter(logits, top).isinf(), top_p_bisect(logits, top).isinf()
            for row in (a != b).any(-1).nonzero().flatten().tolist():
                differing += 1
                probs = logits[row].softmax(-1)
                for tok in (a[row] != b[row]).nonzero().flatten().tolist():
                    above = float(probs[probs > probs[tok]].sum())
                    assert abs(above - p) < 2e-6 * max(1.0, 5000 * float(probs[tok])), (scale, p, above)
    assert differing <= 20  # of 1,600 rows


def test_penalty_matches_transformers_rule():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(1)
    logits = torch.randn(2, 20)
    seen_ids = torch.tensor([[3, 5, 5, 7], [0, 1, 2, 19]])
    seen = torch.zeros(2, 20, dtype=torch.bool).scatter(1, seen_ids, True)
    ours = penalise(logits.clone(), seen, torch.tensor([1.3, 1.3]))
    ref = RepetitionPenaltyLogitsProcessor(1.3)(seen_ids, logits.clone())
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("method", ["sort", "bisect"])
def test_draws_follow_the_tempered_nucleus_distribution(method):
    """200k draws from one row: frequencies within 4 sigma of softmax(logits / T) renormalised on the nucleus."""
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    n, t, p = 200_000, 0.7, 0.9
    knobs = Knobs(torch.full((n,), t), torch.full((n,), p), None)
    draws = choose(logits.expand(n, -1).clone(), knobs, greedy=False, seen=None, top_p_method=method)
    assert_follows_nucleus(draws, logits, t, p)


def test_greedy_ignores_temperature_and_top_p():
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, -1.0, 4.0]])
    knobs = Knobs(torch.tensor([0.1, 5.0]), torch.tensor([0.01, 0.5]), None)
    assert choose(logits, knobs, greedy=True, seen=None).tolist() == [1, 0]

"""The VLM glue: pixel shuffle, splicing, batch independence, KV cache, freeze policy, width checks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from r1v.core.interfaces import IMG_CONTEXT, Sample
from r1v.data.synthetic import generate
from r1v.model.build import ModelConfigError, apply_freeze, build
from r1v.model.parts.mlp import MLPAdapter, pixel_shuffle


def test_pixel_shuffle_shapes_and_versions():
    x = torch.arange(2 * 4 * 4 * 3, dtype=torch.float).reshape(2, 4, 4, 3)
    v1, v2 = pixel_shuffle(x, 0.5, "v1"), pixel_shuffle(x, 0.5, "v2")
    assert v1.shape == v2.shape == (2, 2, 2, 12)
    assert torch.equal(v1.transpose(1, 2), v2)  # the two versions differ by a transpose of the grid
    # v2 keeps row-major order: output (0, 1) holds input row 0, columns 2..3
    assert torch.equal(v2[0, 0, 1, :6], torch.cat([x[0, 0, 2], x[0, 0, 3]]))


def test_r1v_adapter_matches_internvl_layout():
    a = MLPAdapter(in_features=3200, llm_hidden=5120, downsample_ratio=0.5)
    names = {n: tuple(p.shape) for n, p in a.named_parameters()}
    assert names == {"0.weight": (12800,), "0.bias": (12800,), "1.weight": (5120, 12800), "1.bias": (5120,),
                     "3.weight": (5120, 5120), "3.bias": (5120,)}  # fmt: skip
    assert sum(p.numel() for p in a.parameters()) == pytest.approx(92.3e6, rel=0.01)  # ≈ 0.092B as R1V


def sample(i: int, n_images: int = 1, size: tuple[int, int] = (64, 64)) -> Sample:
    s, _ = generate(i, "val")
    img = s.images[0].resize(size)
    return Sample(s.id, "<image>\n" * (n_images - 1) + s.question, s.answer, [img] * n_images, s.reasoning)


def test_image_tokens_are_spliced_in_order(tiny_vlm):
    model, proc = tiny_vlm
    proc.max_tiles = 4
    try:
        s = sample(0, n_images=2, size=(128, 64))
        s.images[1] = s.images[1].resize((64, 64))
        enc = proc.encode(s, "answer")  # a wide image: 2 tiles + thumbnail; then a square one: 1 tile
    finally:
        proc.max_tiles = 1
    assert enc["pixel_values"].shape == (4, 3, 64, 64)
    ids = torch.tensor([enc["input_ids"]])
    assert int((ids == model.img_context_id).sum()) == 4 * model.tokens_per_tile == 64
    with torch.no_grad():
        embeds = model.embed(ids, enc["pixel_values"])
        expected = model.encode_images(enc["pixel_values"]).reshape(-1, embeds.shape[-1])
    assert torch.allclose(embeds[0][ids[0] == model.img_context_id], expected)
    text_pos = ids[0] != model.img_context_id
    plain = model.backbone.get_input_embeddings()(ids)
    assert torch.equal(embeds[0][text_pos], plain[0][text_pos])


def test_outputs_do_not_depend_on_other_samples(tiny_vlm):
    model, proc = tiny_vlm
    samples = [sample(1), sample(2, n_images=2), Sample("t", "no image here?", "1")]
    encoded = [proc.encode(s, "answer") for s in samples]
    batch = proc.collate(encoded)
    with torch.no_grad():
        together = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits
        for b, e in enumerate(encoded):
            alone = proc.collate([e])
            single = model(alone["input_ids"], alone["attention_mask"], alone["pixel_values"]).logits
            n = len(e["input_ids"])
            torch.testing.assert_close(together[b, :n], single[0], atol=1e-4, rtol=1e-4)


def test_loss_is_on_answer_tokens_only(tiny_vlm):
    _, proc = tiny_vlm
    enc = proc.encode(sample(3), "answer")
    labelled = [t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != -100]
    assert proc.tokenizer.decode(labelled) == f"\\boxed{{{sample(3).answer}}}" + proc.tokenizer.eos_token
    assert enc["labels"][: enc["prompt_len"]] == [-100] * enc["prompt_len"]


def test_kv_cache_generation_equals_no_cache_forward(tiny_vlm):
    model, proc = tiny_vlm
    samples = [sample(4), sample(5, n_images=2)]
    batch = proc.collate([proc.encode(s, None) for s in samples], padding_side="left")
    with torch.no_grad():
        cached = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                max_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=proc.tokenizer.pad_token_id)  # fmt: skip
        ids, mask = batch["input_ids"], batch["attention_mask"]
        for step in range(8):  # recompute the whole sequence every step, no cache
            logits = model(ids, mask, batch["pixel_values"], use_cache=False).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            assert torch.equal(nxt[:, 0], cached[:, step]), f"step {step} differs"
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)


def test_freeze_policy_only_adapter_gets_gradients(registry, compose):
    model, proc = build(compose()["model"], registry)
    names = apply_freeze(model, ["adapter"])
    assert names and all(n.startswith("adapter.") for n in names)
    batch = proc.collate([proc.encode(sample(6), "answer")])
    model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"]).loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == n.startswith("adapter."), n
    with pytest.raises(Exception, match="matches no parameter"):
        apply_freeze(model, ["adaptor"])
    assert len(apply_freeze(model, ["backbone.model.layers.0.*"])) > 0


def test_adapter_width_mismatch_names_both_sizes(registry, compose):
    cfg = compose("model.adapter.in_features=32")["model"]
    with pytest.raises(ModelConfigError) as e:
        build(cfg, registry)
    msg = str(e.value)
    assert "width 32" in msg and "width 64" in msg and "\n" not in msg


def test_image_without_slots_is_an_error(tiny_vlm):
    model, proc = tiny_vlm
    batch = proc.collate([proc.encode(Sample("t", "text only", "1"), "answer")])
    with pytest.raises(ValueError, match="do not fill"):
        model.embed(batch["input_ids"], torch.zeros(1, 3, 64, 64))
    assert IMG_CONTEXT in proc.tokenizer.get_vocab()
    assert isinstance(Image.new("RGB", (1, 1)), Image.Image)


def test_missing_image_tokens_are_added_with_mean_embeddings():
    """Re-assembly onto a tokenizer without image tokens: they are added, rows = mean (deterministic)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from r1v.core.interfaces import IMG_END, IMG_START, LanguageBackbone
    from r1v.model.build import ensure_special_tokens

    vocab = {w: i for i, w in enumerate(["<eos>", "<pad>", "how", "many", "?"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<pad>")
    cfg = Qwen2Config(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=False)  # fmt: skip
    lm = Qwen2ForCausalLM(cfg)
    mean_in, mean_out = lm.get_input_embeddings().weight.mean(0), lm.get_output_embeddings().weight.mean(0)
    bb = LanguageBackbone(lm, tok, None)
    ensure_special_tokens(bb)
    assert len(tok) == 10 and lm.get_input_embeddings().weight.shape[0] == 10
    for t in (IMG_START, IMG_END, IMG_CONTEXT):
        row = tok.convert_tokens_to_ids(t)
        assert row >= 5 and tok.tokenize(f"how {t} many") == ["how", t, "many"]
        torch.testing.assert_close(lm.get_input_embeddings().weight[row], mean_in)
        torch.testing.assert_close(lm.get_output_embeddings().weight[row], mean_out)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_samples_do_not_leak(tiny_vlm, attn):
    """Each sample's logits in a packed row equal its logits alone: no attention or position leakage."""
    model, proc = tiny_vlm
    long_answer = Sample("t", "no image here?", "one two three four five six seven")  # more answer tokens
    samples = [sample(10), sample(11, n_images=2), long_answer, sample(12)]
    encoded = [proc.encode(s, "answer") for s in samples]
    lengths = [len(e["input_ids"]) for e in encoded]
    packed = proc.pack(encoded, max_tokens=lengths[0] + lengths[1] + lengths[2], attn=attn)
    assert packed["input_ids"].shape[0] == 2 and packed["attention_mask"].shape[1] == 1
    old = model.backbone.config._attn_implementation
    model.backbone.config._attn_implementation = attn
    try:
        with torch.no_grad():
            out = model(packed["input_ids"], packed["attention_mask"], packed["pixel_values"], packed["labels"],
                        position_ids=packed["position_ids"])  # fmt: skip
            starts = [(0, 0), (0, lengths[0]), (0, lengths[0] + lengths[1]), (1, 0)]
            losses = []
            for (row, start), e in zip(starts, encoded, strict=True):
                alone = proc.collate([e])
                ref = model(alone["input_ids"], alone["attention_mask"], alone["pixel_values"], alone["labels"])
                n = len(e["input_ids"])
                torch.testing.assert_close(out.logits[row, start : start + n], ref.logits[0], atol=1e-4, rtol=1e-4)
                losses.append((ref.loss, int((alone["labels"] != -100).sum())))  # every answer token is a target
    finally:
        model.backbone.config._attn_implementation = old
    # the packed loss is the token-weighted mean of the samples' losses
    expected = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    torch.testing.assert_close(out.loss, expected, atol=1e-4, rtol=1e-4)


def test_varlen_packing_matches_samples_alone(tiny_vlm):
    """Padding-free packing (``r1v_varlen``): one row, no mask tensor; logits, loss and gradients equal the
    samples run alone; without the packed lengths the same model is plain SDPA (padded batches still work)."""
    from r1v.model import varlen

    model, proc = tiny_vlm
    samples = [sample(20), sample(21, n_images=2), Sample("t", "no image here?", "one two three"), sample(22)]
    encoded = [proc.encode(s, "answer") for s in samples]
    lengths = [len(e["input_ids"]) for e in encoded]
    packed = proc.pack(encoded, max_tokens=1, attn=varlen.NAME)
    assert packed["input_ids"].shape == (1, sum(lengths)) and packed["lengths"] == lengths
    assert packed["attn_kwargs"]["cu_seq_lens_q"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    varlen.register()
    old = model.backbone.config._attn_implementation
    model.backbone.config._attn_implementation = varlen.NAME
    try:
        out = model(packed["input_ids"], packed["attention_mask"], packed["pixel_values"], packed["labels"],
                    position_ids=packed["position_ids"], **packed["attn_kwargs"])  # fmt: skip
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        padded = proc.collate(encoded)  # the unpacked path of the same model: SDPA with a padding mask
        ref = model(padded["input_ids"], padded["attention_mask"], padded["pixel_values"], padded["labels"])
        ref.loss.backward()
        start = 0
        for b, n in enumerate(lengths):
            torch.testing.assert_close(out.logits[0, start : start + n], ref.logits[b, :n], atol=1e-4, rtol=1e-4)
            start += n
        torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
        assert grads
        for n, p in model.named_parameters():
            if n in grads:
                torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4)
    finally:
        model.zero_grad()
        model.backbone.config._attn_implementation = old


def test_flop_counter_counts_what_trains(tiny_vlm):
    """6·N·t for full fine-tuning; frozen encoder in front costs 2·N_v, a frozen backbone after a trainable
    adapter 4·N_b (activation gradients only); attention n² per sample, so packing changes no FLOP."""
    from r1v.runtime.perf import FlopCounter, part_shape

    model, _ = tiny_vlm
    shapes = {p: part_shape(getattr(model, p)) for p in ("vision", "adapter", "backbone")}
    linear = sum(m.weight.numel() for m in model.backbone.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.backbone.config
    assert shapes["backbone"].matmul_params == linear
    assert shapes["backbone"].layers == cfg.num_hidden_layers
    assert shapes["backbone"].attn_width == cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        full = FlopCounter(model)
        assert full.mult_w == {"vision": 6, "adapter": 6, "backbone": 6}
        b = shapes["backbone"]
        text_only = full.step([10, 30], tiles=0)
        assert text_only == 6 * b.matmul_params * 40 + 3 * 2 * b.layers * b.attn_width * (100 + 900)
        # SFT's chunked loss runs the LM head on the answer tokens only: its FLOPs are counted there alone
        assert full.head_params == cfg.vocab_size * cfg.hidden_size
        assert full.step([10, 30], tiles=0, head_tokens=7) == text_only - 6 * full.head_params * (40 - 7)
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("adapter."))
        r1v = FlopCounter(model)
        assert r1v.mult_w == {"vision": 2, "adapter": 6, "backbone": 4} and r1v.mult_a["vision"] == 1
        assert r1v.step([10, 30], tiles=2) > r1v.step([10, 30], tiles=0) > 0
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


def test_activation_checkpointing_same_gradients_and_refusal(tiny_vlm):
    """stage.activation_checkpointing=[backbone] recomputes in backward with identical gradients; a part that
    cannot checkpoint is refused in one line naming the allowed ones."""
    from r1v.core.config import ConfigError
    from r1v.stages.base import enable_checkpointing

    model, proc = tiny_vlm
    batch = proc.collate([proc.encode(sample(30), "answer"), proc.encode(sample(31, n_images=2), "answer")])
    was = model.training
    model.train()

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    try:
        plain = grads()
        enable_checkpointing(model, ["backbone"])
        flag = (
            "is_activation_checkpointing"
            if hasattr(model.backbone, "activation_checkpointing_enable")
            else ("is_gradient_checkpointing")
        )
        assert getattr(model.backbone, flag)
        again = grads()
        assert plain.keys() == again.keys() and plain
        for n in plain:
            torch.testing.assert_close(again[n], plain[n], atol=1e-6, rtol=1e-5)
        with pytest.raises(
            ConfigError, match=r"activation_checkpointing: 'vision' cannot checkpoint; allowed: backbone"
        ):
            enable_checkpointing(model, ["vision"])
    finally:
        off = getattr(model.backbone, "activation_checkpointing_disable", None)
        (off or model.backbone.gradient_checkpointing_disable)()
        model.zero_grad()
        model.train(was)


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_loss_equals_the_full_logits_loss_and_keeps_no_logits(tiny_vlm, packed):
    """stage.loss_chunk_tokens: the same loss and gradients as transformers' loss over the full logits, while
    autograd keeps no [tokens, vocab] tensor for the backward (each chunk is recomputed)."""
    from types import SimpleNamespace

    from r1v.model import varlen
    from r1v.stages.sft import SFTStage

    model, proc = tiny_vlm
    encoded = [proc.encode(s, "answer") for s in (sample(40), sample(41, n_images=2), sample(42))]
    varlen.register()
    old = model.backbone.config._attn_implementation
    model.backbone.config._attn_implementation = varlen.NAME
    batch = proc.pack(encoded, 1, attn=varlen.NAME) if packed else proc.collate(encoded)
    vocab = model.backbone.get_output_embeddings().weight.shape[0]
    answer_tokens = int((batch["labels"] != -100).sum())

    def run(chunk: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        model.zero_grad()
        biggest = [0]

        def pack_hook(t: torch.Tensor) -> torch.Tensor:
            biggest[0] = max(biggest[0], t.numel() if t.dim() >= 2 and t.shape[-1] == vocab else 0)
            return t

        fake = SimpleNamespace(model=model, stage={"loss_chunk_tokens": chunk})
        with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
            loss = SFTStage.loss(fake, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, biggest[0]

    try:
        full, g_full, kept_full = run(0)
        chunked, g_chunk, kept_chunk = run(4)
    finally:
        model.zero_grad()
        model.backbone.config._attn_implementation = old
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-5)
    assert g_full.keys() == g_chunk.keys() and g_full
    for n in g_full:
        torch.testing.assert_close(g_chunk[n], g_full[n], atol=1e-6, rtol=1e-4)
    assert kept_full >= answer_tokens * vocab  # transformers keeps the whole logits (at least the answers')
    assert kept_chunk == 0  # the chunks keep only hidden states; their logits are recomputed in the backward


def test_bf16_mixed_without_deepspeed_holds_frozen_parts_in_bf16_and_trained_ones_in_fp32(compose, tmp_path):
    """trainer=gpu (plain Lightning, bf16-mixed) would keep the float32 vision encoder in float32 under autocast
    (the rollout engine, which runs without autocast, encoded images in float32: 1.5× the rollout time on an
    H100). Frozen parts go to bf16; trained weights keep float32 masters; 32-true changes nothing."""
    import torch

    from r1v.stages.setup import build_trainer
    from r1v.stages.sft import SFTStage

    dtypes = {}
    for precision in ("bf16-mixed", "32-true"):
        cfg = compose(f"trainer.precision={precision}", "stage.trainable=[adapter]")
        stage = SFTStage(cfg)
        stage._trainer = build_trainer(cfg, tmp_path / precision)
        stage.configure_model()
        dtypes[precision] = {part: {p.dtype for p in getattr(stage.model, part).parameters()}
                             for part in ("vision", "adapter", "backbone")}  # fmt: skip
    assert dtypes["bf16-mixed"] == {"vision": {torch.bfloat16}, "adapter": {torch.float32},
                                    "backbone": {torch.bfloat16}}  # fmt: skip
    assert dtypes["32-true"] == {"vision": {torch.float32}, "adapter": {torch.float32}, "backbone": {torch.float32}}


def test_repeated_tiles_are_encoded_once_with_the_same_tokens_and_gradients(tiny_vlm):
    """GRPO's G completions repeat their prompt's tiles: the encoder sees each distinct tile once, and the tokens and
    the adapter's gradients equal those of encoding every copy."""
    from r1v.model.vlm import distinct_tiles

    model, _ = tiny_vlm
    torch.manual_seed(0)
    size = model.vision.image_size if hasattr(model.vision, "image_size") else 64
    a = torch.randn(3, 3, size, size)
    px = torch.stack([a[1], a[0], a[1], a[2], a[0], a[1]])  # (6, 3, S, S): 3 distinct
    seen = []
    hook = model.vision.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        tokens = model.encode_images(px)  # (6, T, D)
        (tokens * torch.linspace(-1, 1, tokens.numel()).view_as(tokens)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.adapter.named_parameters()}
        model.zero_grad(set_to_none=True)
        one_by_one = torch.cat([model.encode_images(t[None]) for t in px])
        (one_by_one * torch.linspace(-1, 1, tokens.numel()).view_as(tokens)).sum().backward()
    finally:
        hook.remove()
    assert seen[0] == 3 and seen[1:] == [1] * 6
    torch.testing.assert_close(tokens, one_by_one, rtol=1e-5, atol=1e-5)
    for n, p in model.adapter.named_parameters():
        assert (grads[n] - p.grad).norm() <= 1e-5 * p.grad.norm()  # summation order only
    model.zero_grad(set_to_none=True)
    assert distinct_tiles(a)[1] is None  # all distinct: nothing gathered
    _, index = distinct_tiles(px)
    assert index.tolist() == [0, 1, 0, 2, 1, 0]  # first-seen order

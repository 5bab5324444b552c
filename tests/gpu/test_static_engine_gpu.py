"""GPU: rollout=static's captured path (CUDA graphs, several attention windows, compile) against the reference."""

from __future__ import annotations

import pytest
import torch

from r1v.data.synthetic import generate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def cuda_vlm(registry, compose):
    from r1v.model.build import build

    torch.manual_seed(0)
    model, processor = build(compose()["model"], registry)
    return model.cuda().eval(), processor


def _samples(n: int):
    return [generate(i, "val")[0] for i in range(n)]


@pytest.mark.parametrize("attention", ["sdpa", "triton"])
@pytest.mark.parametrize("compile", [False, True])
def test_graphs_greedy_equal_reference_across_windows(registry, cuda_vlm, compile, attention):
    """fp32 on the GPU: window=16 makes 40 new tokens cross several captured graphs (sdpa), or one graph reads
    the filled columns itself (the split-K kernel); per-row penalties too."""
    model, processor = cuda_vlm
    samples = _samples(6)
    params = [{"repetition_penalty": 1.0 + 0.25 * (i % 3)} for i in range(6)]
    ref = registry.build("rollout", "hf").generate_ids(model, processor, samples, 40, greedy=True, sample_params=params)
    engine = registry.build("rollout", "static", window=16, compile=compile, attention=attention)
    first = engine.generate_ids(model, processor, samples, 40, greedy=True, sample_params=params)
    again = engine.generate_ids(model, processor, samples, 40, greedy=True, sample_params=params)  # replayed graphs
    assert first == ref and again == ref
    assert len(engine._state.graphs) >= 3 if attention == "sdpa" else len(engine._state.graphs) == 1


@pytest.mark.parametrize("fuse", [False, True])
def test_a_whole_step_compile_decodes_as_the_reference(registry, cuda_vlm, fuse):
    """compile_scope=step: inductor's code for every layer of the step with the split-K kernel inside, one graph,
    replayed twice; greedy ids equal transformers' generate (fp32)."""
    model, processor = cuda_vlm
    samples = _samples(6)
    ref = registry.build("rollout", "hf").generate_ids(model, processor, samples, 32, greedy=True)
    engine = registry.build("rollout", "static", compile=True, attention="triton", compile_scope="step", fuse=fuse)
    assert engine.generate_ids(model, processor, samples, 32, greedy=True) == ref
    assert engine.generate_ids(model, processor, samples, 32, greedy=True) == ref
    assert len(engine._state.graphs) == 1


def test_split_k_kernel_at_qwen_shapes():
    """bf16 at Qwen2.5-1.5B's decode shapes (64 rows, 2 KV heads x 6 query heads, head 128) and 32B's (8 x 5):
    the kernel against float32 attention over each row's filled columns, rows of 1 to 2,000 columns."""
    from r1v.generation.triton_attention import decode_attention, reference

    g = torch.Generator(device="cuda").manual_seed(0)
    for rows, n_kv, group, length in ((64, 2, 6, 2304), (16, 8, 5, 3072)):
        q = torch.randn(rows, n_kv, group, 128, device="cuda", generator=g, dtype=torch.bfloat16)
        k, v = (torch.randn(rows, n_kv, length, 128, device="cuda", generator=g, dtype=torch.bfloat16)
                for _ in range(2))  # fmt: skip
        end = torch.tensor([length - 100], device="cuda")
        start = torch.randint(0, length - 2000, (rows,), device="cuda", generator=g)
        start[0] = length - 101  # one column
        out = decode_attention(q, k, v, start, end, 128**-0.5)
        torch.testing.assert_close(out.float(), reference(q, k, v, start, end, 128**-0.5).float(), atol=2e-2,
                                   rtol=2e-2)  # fmt: skip


def test_graphs_follow_new_weights(registry, cuda_vlm):
    """Captured graphs read the parameters in place: an in-place update shows; new storage forces a re-capture."""
    model, processor = cuda_vlm
    samples = _samples(4)
    engine = registry.build("rollout", "static", window=16)
    before = engine.generate_ids(model, processor, samples, 24, greedy=True)
    w = model.backbone.model.layers[0].mlp.down_proj.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(3.0)
        ref = registry.build("rollout", "hf").generate_ids(model, processor, samples, 24, greedy=True)
        assert engine.generate_ids(model, processor, samples, 24, greedy=True) == ref != before
        w.data = saved.clone()  # new storage, as a ZeRO-3 gather gives
        assert engine.generate_ids(model, processor, samples, 24, greedy=True) == before
    finally:
        w.data = saved


@pytest.mark.parametrize("compile", [False, True])
def test_sampling_is_seeded_on_the_gpu(registry, cuda_vlm, compile):
    model, processor = cuda_vlm
    engine = registry.build("rollout", "static", temperature=1.0, top_p=0.9, compile=compile)
    samples = _samples(1) * 16
    torch.manual_seed(1)
    a = engine.generate_ids(model, processor, samples, 32)
    torch.manual_seed(1)
    b = engine.generate_ids(model, processor, samples, 32)
    assert a == b and len({tuple(r) for r in a}) > 1


def _mixed(call: int) -> list:
    """Six prompts whose image counts (0, 1 or 2) and lengths change from call to call, as rollout batches do."""
    from r1v.core.interfaces import IMAGE_PLACEHOLDER, Sample

    out = []
    for i in range(6):
        s = generate(10 * call + i, "val")[0]
        n = (i + call) % 3
        question = s.question.replace(IMAGE_PLACEHOLDER + "\n", "") + " Count carefully." * ((i + call) % 4)
        out.append(Sample(f"{s.id}-{n}", "\n".join([IMAGE_PLACEHOLDER] * n + [question]), s.answer, s.images * n))
    return out


@pytest.mark.parametrize("compile", [False, True])
def test_consecutive_rollouts_replay_graphs_safely(registry, cuda_vlm, compile):
    """Rollout after rollout, as GRPO makes them: prompts of other lengths and image counts each call, the
    image placeholder suppressed, top-p on then off, the weights changed in place between calls (an optimizer
    step) and the allocator churned by other work. Every greedy call equals the reference engine; every sampled
    token is a real token (a replay reading a freed index tensor died here: a device-side assert in index_fill)."""
    model, processor = cuda_vlm
    ctx, vocab = model.img_context_id, model.backbone.get_output_embeddings().weight.shape[0]
    engine = registry.build("rollout", "static", window=16, compile=compile, temperature=1.0, top_p=0.9)
    ref = registry.build("rollout", "hf")
    w = model.backbone.model.layers[0].mlp.down_proj.weight
    saved = w.detach().clone()
    try:
        for call in range(6):
            samples = _mixed(call // 2)  # two calls in a row with the same shapes: the second replays the graphs
            greedy = engine.generate_ids(model, processor, samples, 40, greedy=True)
            assert greedy == ref.generate_ids(model, processor, samples, 40, greedy=True), f"call {call}"
            engine.top_p = 0.9 if call % 4 < 2 else 1.0
            torch.manual_seed(call)
            sampled = engine.generate_ids(model, processor, samples * 2, 40)
            assert all(0 <= t < vocab and t != ctx for row in sampled for t in row), f"call {call}"
            churn = [torch.full((k,), 2**40, dtype=torch.long, device="cuda") for k in range(1, 257)]
            del churn  # freed blocks now hold out-of-range indices
            with torch.no_grad():
                w.add_(torch.randn_like(w) * 0.05)
        torch.cuda.synchronize()
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_a_replay_never_reads_a_tensor_of_an_earlier_call(registry, compose):
    """Deterministic form of the GRPO crash: the LM head is pushed towards the image placeholder (unsuppressed, it
    would be every greedy token), and in each call, between the prefill and the first replay (the streaming
    callback), every free small block of the allocator is taken and filled with an out-of-range index. A graph
    that reads a tensor made for an earlier call reads one of them: a device-side assert, or the placeholder."""
    from r1v.model.build import build

    torch.manual_seed(0)
    model, processor = build(compose("model=tiny_reasoner")["model"], registry)
    samples = _samples(4)
    ctx = model.img_context_id
    ids = processor.collate([processor.encode(s, target=None) for s in samples], padding_side="left")
    with torch.no_grad():
        h = model.hidden_states(ids["input_ids"], ids["attention_mask"], ids["pixel_values"])[:, -1].mean(0)
        head = model.backbone.get_output_embeddings().weight
        head[ctx] = 50 * head.norm(dim=1).max() * h / h.norm()
    model = model.cuda().eval()
    ref = registry.build("rollout", "hf").generate_ids(model, processor, samples, 24, greedy=True)
    assert all(ctx not in row for row in ref)
    engine = registry.build("rollout", "static", window=16)
    for call in range(3):
        fillers: list[torch.Tensor] = []

        def take_free_blocks(tokens: list[int], fillers: list[torch.Tensor] = fillers) -> None:
            if not fillers:  # 512-byte blocks: 8192 of them cover every free block of the small pool's segments
                fillers.extend(torch.full((1,), 2**40, dtype=torch.long, device="cuda") for _ in range(8192))

        out = engine.generate_ids(model, processor, samples, 24, greedy=True, on_token=take_free_blocks)
        torch.cuda.synchronize()
        assert fillers and out == ref, f"call {call}"

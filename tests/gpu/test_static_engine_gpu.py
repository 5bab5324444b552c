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


@pytest.mark.parametrize("compile", [False, True])
def test_graphs_greedy_equal_reference_across_windows(registry, cuda_vlm, compile):
    """fp32 on the GPU: window=16 makes 40 new tokens cross several captured graphs; per-row penalties too."""
    model, processor = cuda_vlm
    samples = _samples(6)
    params = [{"repetition_penalty": 1.0 + 0.25 * (i % 3)} for i in range(6)]
    ref = registry.build("rollout", "hf").generate_ids(model, processor, samples, 40, greedy=True, sample_params=params)
    engine = registry.build("rollout", "static", window=16, compile=compile)
    first = engine.generate_ids(model, processor, samples, 40, greedy=True, sample_params=params)
    again = engine.generate_ids(model, processor, samples, 40, greedy=True, sample_params=params)  # replayed graphs
    assert first == ref and again == ref
    assert len(engine._state.graphs) >= 3


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
    from r1v.interfaces import IMAGE_PLACEHOLDER, Sample

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

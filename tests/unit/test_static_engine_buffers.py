"""rollout=static's captured step reads only tensors that outlive its CUDA graphs.

A CUDA graph replays the addresses it was captured with. A tensor the step reads that was made for one
``decode()`` call (and freed after it) is garbage on the next replay: on an H100 the suppress-id tensor
rebuilt per call made ``index_fill`` read freed memory and GRPO died at its second rollout with a
device-side assert. Here, on the CPU, every tensor the step function reads that it did not make itself
is recorded (a dispatch mode sees every aten op), and must (a) keep its storage across ``decode()`` calls
and (b) be a state buffer or a tensor in :meth:`Decoder.fingerprint` (the graphs' key).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from r1v.data.synthetic import generate


class _ExternalReads(TorchDispatchMode):
    """Storages the ops inside the mode read but did not allocate themselves, by storage address."""

    def __init__(self, into: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.external = into  # address -> tensor (held: its address cannot be reused while recorded)
        self.made: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # lift_fresh takes a constant written in the code (``x[:, 0] = False``), made for this op alone
        fresh = func is torch.ops.aten.lift_fresh.default
        for t in [] if fresh else tree_leaves((args, kwargs or {})):
            if isinstance(t, torch.Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr and ptr not in self.made:
                    self.external.setdefault(ptr, t)
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self.external:
                    self.made.add(ptr)
        return out


def _recording(engine) -> list[dict[int, torch.Tensor]]:
    """Wrap ``engine._step`` (the function a graph captures): one dict of external reads per ``decode()`` call."""
    calls: list[dict[int, torch.Tensor]] = []
    step, decode = engine._step, engine.decode

    def recorded_decode(*a, **k):
        calls.append({})
        return decode(*a, **k)

    def recorded_step(*a, **k):
        with _ExternalReads(calls[-1]):
            return step(*a, **k)

    engine._step, engine.decode = recorded_step, recorded_decode
    return calls


def _state_ptrs(st) -> set[int]:
    tensors = [*st.k, *st.v, st.tok, st.col, st.pos, st.t, st.pad, st.done, st.out, st.seen, st.suppress,
               st.knobs.temperature, st.knobs.top_p, st.knobs.penalty]  # fmt: skip
    return {t.untyped_storage().data_ptr() for t in tensors if t is not None}


@pytest.mark.parametrize("fuse", [False, True])
def test_every_tensor_a_step_reads_keeps_its_address_across_calls(registry, tiny_vlm, fuse, one_thread):
    model, processor = tiny_vlm
    assert model.never_generated  # the suppress path is on (the image placeholder)
    engine = registry.build("rollout", "static", temperature=1.0, top_p=0.9, fuse=fuse)
    calls = _recording(engine)
    first = [generate(i, "val")[0] for i in range(4)]
    other = [generate(i, "val")[0] for i in range(10, 14)]  # other prompts, the same batch: the state is reused
    params = [{"repetition_penalty": 1.0 + 0.2 * i} for i in range(4)]  # penalty and top-p on: every buffer read
    torch.manual_seed(0)
    for samples in (first, first, other):
        engine.generate_ids(model, processor, samples, 6, sample_params=params)
    assert len(calls) == 3 and all(calls)
    for k, reads in enumerate(calls[1:], start=2):
        moved = sorted(tuple(t.shape) for ptr, t in reads.items() if ptr not in calls[0])
        assert not moved, f"call {k}: the step reads tensors made for this call: shapes {moved}"
    st, dec = engine._state, engine._decoder
    covered = _state_ptrs(st) | set(dec.fingerprint())
    uncovered = sorted(tuple(t.shape) for ptr, t in calls[0].items() if ptr not in covered)
    assert not uncovered, f"read by the step but neither state nor in the graph key: shapes {uncovered}"
    assert st.suppress is not None and st.suppress.untyped_storage().data_ptr() in calls[0]


def test_the_graph_key_follows_rebuilt_fused_buffers(tiny_vlm):
    """New fused buffers (a re-collected model of another shape, or another model at the freed addresses)
    change :meth:`Decoder.fingerprint`, so the graphs that baked in the old ones are dropped."""
    from r1v.generation import Decoder

    model, _ = tiny_vlm
    dec = Decoder(model.backbone, fuse=True)
    before = dec.fingerprint()
    dec.collect()  # same weights: the buffers are refilled in place
    assert dec.fingerprint() == before
    held = dec.fused
    dec.fused = []  # the next collect allocates new buffers
    dec.collect()
    assert dec.fingerprint() != before and held[0][0].data_ptr() not in dec.fingerprint()
    rotary = next(model.backbone.model.rotary_emb.buffers())
    assert rotary.data_ptr() in dec.fingerprint()


def test_a_callers_autocast_does_not_reach_the_engine(registry, tiny_vlm, one_thread):
    """Lightning's bf16-mixed runs validation and training steps under autocast; the engine computes in the
    weights' own dtype anyway (its fp32 KV cache was handed bf16 K/V and index_copy_ refused: seen on the H100)."""
    model, processor = tiny_vlm
    samples = [generate(i, "val")[0] for i in range(3)]
    engine = registry.build("rollout", "static")
    plain = engine.generate_ids(model, processor, samples, 8, greedy=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert engine.generate_ids(model, processor, samples, 8, greedy=True) == plain


def test_fused_copies_are_made_only_for_the_layers_that_fit(registry, compose, one_thread, caplog):
    """``fuse=true`` keeps a second copy of q|k|v and gate|up (at 32B shapes 41 GB: it did not load on an 80 GB
    card). Under a memory budget only the first layers that fit are fused, said in one line; the rest run
    unfused, with the same greedy tokens as a fully fused and an unfused decoder."""
    from r1v.data.synthetic import generate
    from r1v.generation import Decoder
    from r1v.model.build import build

    torch.manual_seed(0)
    model, processor = build(compose("model=tiny_reasoner")["model"], registry)
    model.eval()
    lm = model.backbone  # the causal LM the engine decodes with
    layer = lm.model.layers[0]
    a, m = layer.self_attn, layer.mlp
    per_layer = sum(p.numel() * p.element_size() for part in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj)
                    for p in part.parameters())  # fmt: skip
    samples = [generate(i, "val")[0] for i in range(3)]
    ids = {}
    for name, fuse, budget in (("none", False, None), ("all", True, None), ("one", True, per_layer + 10)):
        engine = registry.build("rollout", "static", fuse=fuse)
        caplog.clear()
        engine._decoder = Decoder(lm, fuse=fuse, fuse_budget=budget)  # the engine's GPU budget, made explicit
        ids[name] = engine.generate_ids(model, processor, samples, 10, greedy=True)
        fused = len(engine._decoder.fused)
        assert fused == {"none": 0, "all": len(lm.model.layers), "one": 1}[name]
        said = [r.getMessage() for r in caplog.records if "fused q|k|v" in r.getMessage()]
        assert len(said) == (name == "one"), said
    assert len(lm.model.layers) > 1 and f"for 1 of {len(lm.model.layers)} layers" in said[0]
    assert ids["one"] == ids["all"] == ids["none"]


def test_split_k_decode_gemms_equal_plain_ones(registry, compose, one_thread):
    """split_k: a decode GEMM with few output tiles for the SMs runs as K slices in one batched GEMM, summed in
    float32: the same product up to summation order, and the same greedy tokens on the tiny reasoner."""
    from r1v.data.synthetic import generate
    from r1v.generation.decoder import linear, split_count
    from r1v.model.build import build

    assert split_count(64, 1536, 8960, 132) == 8  # Qwen2.5-1.5B's down projection at batch 64 on an H100
    assert split_count(64, 1536, 1536, 132) == 8 and split_count(64, 17920, 1536, 132) == 1  # o; gate|up: enough
    assert split_count(64, 5120, 27648, 132) == 2  # 32B's down projection
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 1, 512, generator=g), torch.randn(96, 512, generator=g), torch.randn(96, generator=g)
    torch.testing.assert_close(linear(x, w, b, sms=8), torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-4)
    assert split_count(3, 96, 512, 8) == 8
    torch.manual_seed(0)
    model, processor = build(compose("model=tiny_reasoner")["model"], registry)
    samples = [generate(i, "val")[0] for i in range(3)]
    engines = [registry.build("rollout", "static", split_k=on) for on in (False, True)]
    runs = [e.generate_ids(model.eval(), processor, samples, 10, greedy=True) for e in engines]
    assert runs[0] == runs[1]


def test_a_shorter_rollout_reuses_the_buffers_and_graph_key(tiny_vlm, one_thread):
    """A rollout with fewer new tokens than the last one keeps the cache and output buffers (and so the captured
    graphs): the output is cut to the budget instead of reallocated."""
    from r1v.generation import StaticEngine

    lm = tiny_vlm[0].backbone
    engine = StaticEngine(cuda_graphs=False)
    embeds, mask = lm.model.embed_tokens(torch.tensor([[5, 6, 7]])), torch.ones(1, 3, dtype=torch.long)
    knobs = {"temperature": [1.0], "top_p": [1.0], "repetition_penalty": [1.0]}
    long = engine.decode(lm, embeds, mask, 9, True, knobs, eos=None, pad=0)
    st = engine._state
    short = engine.decode(lm, embeds, mask, 4, True, knobs, eos=None, pad=0)
    assert engine._state is st and len(short[0]) == 4 and short[0] == long[0][:4]


@pytest.mark.parametrize("fuse", [False, True])
def test_a_whole_decode_step_compiles_as_one_graph_and_computes_the_same(tiny_vlm, fuse):
    """compile_scope=step: every layer of a decode step traced as one graph (fullgraph: no break; the K/V writes
    kept in place through functionalisation), the weights as inputs. Traced here with aot_eager (no C++ build on
    the CPU; the GPU's step uses the split-K kernel, one shape for every step): the same hidden state and cache
    as the eager decoder, and a second model's tensors (new storage, as a ZeRO-3 gather gives) do not recompile."""
    import torch._dynamo

    from r1v.generation import Decoder

    lm = tiny_vlm[0].backbone
    eager = Decoder(lm, fuse=fuse)
    torch._dynamo.reset()
    step = Decoder(
        lm, fuse=fuse, compile=True, compile_scope="step", compile_backend="aot_eager", attention="triton"
    )  # fmt: skip  (the kernel itself is not called: no bounds are passed)
    b, width, col = 3, 24, 7
    g = torch.Generator().manual_seed(0)
    h = torch.randn(b, 1, lm.config.hidden_size, generator=g)
    cos, sin = eager.rope(torch.tensor([[col]] * b), h)
    shape = (len(eager.layers), b, eager.n_kv, width, eager.head_dim)
    k0, v0 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    mask = torch.zeros(b, 1, 1, width).masked_fill_(torch.arange(width) > col, float("-inf"))
    write = torch.tensor([col])

    def per_layer(t: torch.Tensor) -> list[torch.Tensor]:  # the engine's layout: each layer its own storage
        return [x.clone() for x in t]

    caches = [(per_layer(k0), per_layer(v0)) for _ in range(2)]
    with torch.no_grad():  # as the engine decodes
        want = eager.forward(h, cos, sin, *caches[0], write, width, mask)
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        got = step.forward(h, cos, sin, *caches[1], write, width, mask)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for eager_cache, step_cache in zip(*caches, strict=True):  # K, then V
            torch.testing.assert_close(torch.stack(step_cache), torch.stack(eager_cache), rtol=1e-5, atol=1e-5)
        assert not torch.equal(torch.stack(caches[1][0])[:, :, :, col], k0[:, :, :, col])  # written in place
        for p in lm.parameters():  # new storage for every weight
            p.data = p.data.clone()
        step.collect()
        again = step.forward(h, cos, sin, per_layer(k0), per_layer(v0), write, width, mask)
    torch.testing.assert_close(again, want, rtol=1e-5, atol=1e-5)

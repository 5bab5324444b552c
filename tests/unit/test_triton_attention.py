"""The split-K decode attention kernel (r1v/generation/triton_attention.py) on the CPU, through triton's interpreter.

As for the top-p kernel (tests/unit/test_triton_topp.py), ``TRITON_INTERPRET`` must be set before triton is first
imported, so ``test_kernels_under_the_interpreter`` runs the ``interp_`` tests in a fresh process with it set.
Checked: the kernel against float32 attention over each row's filled columns (GQA groups of 1–16 heads, head
sizes 16–64, one to five splits, splits left empty, rows of one column), and the static engine with
``attention=triton`` decoding the same greedy tokens as with ``sdpa`` on the tiny reasoner, prompts of several
lengths (left padding). The CUDA graph and the timing are on the GPU (tests/gpu, benchmarks/rollout_floor.py).
"""

from __future__ import annotations

import pytest
import torch

from tests.unit.interpreted import INTERPRETED, run_interpreted


def test_kernels_under_the_interpreter():
    run_interpreted(__file__)


@pytest.fixture(scope="module")
def kernel():
    if not INTERPRETED:
        pytest.skip("run by test_kernels_under_the_interpreter, in a process with TRITON_INTERPRET=1")
    from r1v.generation import triton_attention

    return triton_attention


@pytest.mark.parametrize(
    ("rows", "n_kv", "group", "head_dim", "length", "splits"),
    [(3, 2, 6, 16, 200, 4), (2, 1, 5, 32, 70, 1), (2, 2, 16, 16, 130, 3), (4, 1, 1, 64, 90, 5)],
)
def test_interp_kernel_matches_attention_over_the_filled_columns(kernel, rows, n_kv, group, head_dim, length,
                                                                 splits):  # fmt: skip
    g = torch.Generator().manual_seed(rows * 100 + length)
    q = torch.randn(rows, n_kv, group, head_dim, generator=g)
    k, v = (torch.randn(rows, n_kv, length, head_dim, generator=g) * 3 for _ in range(2))
    end = torch.tensor([length - 7])
    start = torch.randint(0, length - 8, (rows,), generator=g)
    start[0] = length - 8  # a row of one column: every split but the first is empty
    scale = head_dim**-0.5
    out = kernel.decode_attention(q, k, v, start, end, scale, splits=splits)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, kernel.reference(q, k, v, start, end, scale), atol=2e-6, rtol=1e-5)
    k2, v2 = k.clone(), v.clone()  # columns outside [start, end) are never read
    for b in range(rows):
        k2[b, :, : start[b]] = v2[b, :, : start[b]] = float("nan")
    k2[:, :, end:] = v2[:, :, end:] = float("nan")
    assert torch.equal(kernel.decode_attention(q, k2, v2, start, end, scale, splits=splits), out)


def test_interp_engine_with_the_kernel_decodes_as_with_sdpa(kernel, registry, compose, one_thread):
    """The tiny reasoner (head size 32, two query heads per KV head), prompts of different lengths: the same
    greedy tokens through both attention paths, eagerly on the CPU."""
    from r1v.data.synthetic import generate
    from r1v.model.build import build

    torch.manual_seed(0)
    model, processor = build(compose("model=tiny_reasoner")["model"], registry)
    samples = [generate(i, "val")[0] for i in range(4)]
    assert len({len(processor.encode(s, target=None)["input_ids"]) for s in samples}) > 1
    runs = {}
    for attention in ("sdpa", "triton"):
        engine = registry.build("rollout", "static", attention=attention)
        runs[attention] = engine.generate_ids(model.eval(), processor, samples, 12, greedy=True)
        assert engine._decoder.attention == attention
    assert runs["triton"] == runs["sdpa"]


def test_attention_knob_is_checked():
    from r1v.generation import StaticEngine

    with pytest.raises(ValueError, match="attention 'flash' is not one of auto, sdpa, triton"):
        StaticEngine(attention="flash")
    with pytest.raises(ValueError, match="compile_mode 'fast' is not one of default, max-autotune"):
        StaticEngine(compile_mode="fast")
    with pytest.raises(ValueError, match="compile_scope 'model' is not one of layer, step"):
        StaticEngine(compile_scope="model")

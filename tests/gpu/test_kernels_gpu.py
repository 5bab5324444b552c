"""GPU: ``stage.kernels=liger`` (r1v/runtime/kernels.py) against the built-in path on Qwen2.5-0.5B shapes (2 layers,
full vocabulary): hidden states, per-token log-probs, entropies and every gradient agree to bf16 precision, in
pure bf16 (DeepSpeed's bf16) and under bf16 autocast over float32 weights (``trainer=gpu``'s bf16-mixed)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from r1v.rl.grpo import chunked_logprobs
from r1v.runtime.kernels import apply_kernels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
pytest.importorskip("liger_kernel", reason="needs liger-kernel")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


def _run(lm: torch.nn.Module, ids: torch.Tensor, n: int, autocast: bool) -> tuple[torch.Tensor, ...]:
    """Log-probs and entropies of the last ``n`` tokens of ``ids`` (B, L), the loss's gradients of every weight."""
    lm.zero_grad(set_to_none=True)
    with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        hidden = lm.model(input_ids=ids).last_hidden_state  # (B, L, D)
        lp, ent = chunked_logprobs(lm.get_output_embeddings(), hidden[:, -n - 1 : -1], ids[:, -n:], 256, True)
    weights = torch.linspace(-1, 1, lp.numel(), device=lp.device).view_as(lp)  # a signed per-token upstream gradient
    (lp * weights).sum().backward()
    return hidden.detach(), lp.detach(), ent, {k: p.grad.clone() for k, p in lm.named_parameters()}


@pytest.mark.parametrize("dtype,autocast", [(torch.bfloat16, False), (torch.float32, True)])
def test_liger_path_equals_the_built_in_path(dtype, autocast):
    from r1v.model.parts.qwen2 import qwen2

    torch.manual_seed(0)
    with torch.device("cuda"):
        ref = qwen2("qwen2_5_0_5b", dtype="float32", num_hidden_layers=2).model.to(dtype)
    fused = copy.deepcopy(ref)
    counts = apply_kernels(SimpleNamespace(backbone=fused), "liger")
    assert counts == {"rms_norm": 5, "swiglu": 2, "fused_linear_logprobs": 1}
    ids = torch.randint(0, ref.config.vocab_size, (4, 640), device="cuda")
    h0, lp0, ent0, g0 = _run(ref, ids, 512, autocast)
    h1, lp1, ent1, g1 = _run(fused, ids, 512, autocast)
    assert _rel(h1, h0) < 1e-2
    assert (lp1 - lp0).abs().max() < 0.05 and (lp1 - lp0).abs().mean() < 5e-3  # nats, at |log p| ≈ 12
    assert _rel(ent1, ent0) < 1e-2
    worst = max(g0, key=lambda k: _rel(g1[k], g0[k]))
    assert _rel(g1[worst], g0[worst]) < 3e-2, worst

"""stage.kernels (r1v/runtime/kernels.py): the choice is checked in one line, Liger's kernels patch the backbone's
instances only (never transformers' classes), and off the GPU the patched model computes exactly what it did.
The kernels' numerics against the built-in path are checked on the GPU (tests/gpu/test_kernels_gpu.py): Liger's
Triton code does not run under Triton's CPU interpreter."""

from __future__ import annotations

import sys

import pytest
import torch

from r1v.core.errors import ConfigError
from r1v.model.build import build
from r1v.rl.grpo import chunked_logprobs
from r1v.runtime.kernels import FUSED_HEAD, apply_kernels, check_kernels, is_rms_norm, is_swiglu

pytest.importorskip("liger_kernel", reason="liger-kernel is part of the dev extra")


def test_an_unknown_choice_is_one_line_with_the_choices():
    with pytest.raises(ConfigError) as e:
        check_kernels("ligre")
    assert str(e.value) == "stage.kernels: 'ligre' is not one of none, liger — did you mean 'liger'?"


def test_liger_without_the_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel.ops", None)  # import fails as when it is not installed
    with pytest.raises(ConfigError, match=r"^stage.kernels=liger needs the liger-kernel package .*stage.kernels=none$"):
        check_kernels("liger")


def test_the_stage_refuses_a_bad_choice_before_building(compose):
    from r1v.stages.sft import SFTStage

    with pytest.raises(ConfigError, match="did you mean 'liger'"):
        SFTStage(compose("stage=sft", "stage.kernels=lgier"))


def test_patches_every_norm_and_mlp_of_the_backbone_only_and_the_cpu_output_is_unchanged(registry, compose):
    torch.manual_seed(0)
    model, _ = build(compose()["model"], registry)
    norms = [m for m in model.backbone.modules() if is_rms_norm(m)]
    mlps = [m for m in model.backbone.modules() if is_swiglu(m)]
    layers = model.backbone.config.num_hidden_layers
    assert len(norms) == 2 * layers + 1 and len(mlps) == layers  # two per layer and the final norm
    ids = torch.randint(0, model.backbone.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    before = model.hidden_states(ids, mask, None)
    classes = {type(m): type(m).forward for m in norms + mlps}

    counts = apply_kernels(model, "liger")

    assert counts == {"rms_norm": len(norms), "swiglu": len(mlps), "fused_linear_logprobs": 1}
    assert all("forward" in vars(m) for m in norms + mlps)  # instance attributes ...
    assert all(cls.forward is fwd for cls, fwd in classes.items())  # ... transformers' classes untouched
    assert getattr(model.backbone.get_output_embeddings(), FUSED_HEAD)
    assert model.vision is not None and not any("forward" in vars(m) for m in model.vision.modules())
    after = model.hidden_states(ids, mask, None)
    assert torch.equal(before, after)  # CPU tensors: the built-in code runs


def test_cpu_logprobs_through_a_marked_head_equal_the_chunked_path():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h, targets = torch.randn(2, 7, 16), torch.randint(0, 50, (2, 7))
    ref, ref_ent = chunked_logprobs(head, h, targets, chunk=3, with_entropy=True)
    setattr(head, FUSED_HEAD, True)
    lp, ent = chunked_logprobs(head, h, targets, chunk=3, with_entropy=True)
    assert torch.equal(lp, ref) and torch.equal(ent, ref_ent)
    exact = torch.log_softmax(h @ head.weight.T, -1).gather(2, targets[..., None])[..., 0]
    torch.testing.assert_close(lp, exact)


def test_a_zero3_partitioned_head_keeps_the_built_in_path():
    """ZeRO-3 gathers a weight only inside its module's call; the fused kernel reads the tensor directly."""
    from types import SimpleNamespace

    from r1v.runtime.kernels import fused_head

    head = torch.nn.Linear(4, 8, bias=False)
    on_gpu = SimpleNamespace(is_cuda=True)  # all fused_head reads of the hidden states
    assert not fused_head(head, on_gpu)  # not marked by apply_kernels
    setattr(head, FUSED_HEAD, True)
    assert fused_head(head, on_gpu) and not fused_head(head, torch.zeros(1, 2, 4))  # CUDA only
    head.weight.ds_id = 7  # what DeepSpeed's ZeRO-3 sets on a partitioned parameter
    assert not fused_head(head, on_gpu)

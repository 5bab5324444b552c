"""GPU: LoRA's merged rollout weights under captured CUDA graphs and compile, and a LoRA GRPO run on the GPU."""

from __future__ import annotations

import pytest
import torch

from r1v.data.synthetic import generate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("compile", [False, True])
def test_graphs_decode_lora_as_the_reference_after_each_update(registry, compose, compile):
    """fp32: greedy ids of the static engine (merged W + (α/r)·B·A buffers, freed after each rollout and made
    again, graphs replayed or recaptured) equal transformers' generate through PEFT's layers, before and after the
    LoRA weights change (an optimizer step between two rollouts)."""
    from r1v.model.build import build
    from r1v.model.lora import LoraSpec, apply_lora

    torch.manual_seed(0)
    model, processor = build(compose("model=tiny_reasoner")["model"], registry)
    apply_lora(model, LoraSpec(r=8, alpha=16, dropout=0.0, targets=("backbone",)))
    model = model.cuda().eval()
    samples = [generate(i, "val")[0] for i in range(6)]
    engine = registry.build("rollout", "static", window=16, compile=compile)
    for step in range(2):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".lora_B." in n:
                    p.normal_(0, 0.3, generator=torch.Generator("cuda").manual_seed(step))
        ref = registry.build("rollout", "hf").generate_ids(model, processor, samples, 40, greedy=True)
        assert engine.generate_ids(model, processor, samples, 40, greedy=True) == ref, step
        assert not engine._decoder.merged  # freed when the rollout ended

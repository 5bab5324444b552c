"""LoRA through PEFT (``stage.lora``, r1v/model/lora.py): unchanged output at initialisation, gradients to LoRA and
``stage.trainable`` only, the LoRA-off reference, the static engine on merged weights, merged and unmerged export,
and one line for each bad setting."""

from __future__ import annotations

import pytest
import torch

from r1v.core.errors import ConfigError
from r1v.data.synthetic import generate
from r1v.model.lora import LoraSpec, apply_lora, lora_disabled, lora_layers, lora_names, merge_lora

SPEC = LoraSpec(r=8, alpha=16, dropout=0.0, targets=("backbone", "vision"))


@pytest.fixture(scope="module")
def fresh(registry, compose):
    """fresh(*overrides) -> a newly built (model, processor) in eval mode: LoRA changes a model in place, so the
    session's shared tiny model is never used here."""
    from r1v.model.build import build

    def make(*overrides: str) -> tuple[torch.nn.Module, object]:
        torch.manual_seed(0)
        model, processor = build(compose(*overrides)["model"], registry)
        return model.eval(), processor

    return make


def batch(processor, n: int = 2) -> dict:
    samples = [generate(i, "val")[0] for i in range(n)]
    return processor.collate([processor.encode(s, "reasoning") for s in samples], "right")


def logits(model, b: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(b["input_ids"], b["attention_mask"], b["pixel_values"]).logits


def train_lora(model, seed: int = 1, std: float = 0.05) -> None:
    """LoRA weights as after some training: B ≠ 0, so LoRA changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_output_equals_the_base_at_initialisation(fresh):
    model, processor = fresh()
    b = batch(processor)
    base = logits(model, b)
    names = apply_lora(model, SPEC)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    wrapped = set(lora_layers(model))
    assert {n.rsplit(".", 1)[-1] for n in wrapped if n.startswith("backbone.")} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # fmt: skip
    assert any(n.startswith("vision.") for n in wrapped) and not any(n.startswith("adapter.") for n in wrapped)
    assert torch.equal(logits(model, b), base)  # B = 0: exactly the base


def test_gradients_reach_only_lora_and_stage_trainable(compose):
    from r1v.data.collate import Collator
    from r1v.stages.sft import SFTStage

    torch.manual_seed(0)
    stage = SFTStage(compose("stage=sft", "stage.lora={r: 8, alpha: 16, dropout: 0.0, targets: [backbone, vision]}"))
    stage.configure_model()
    model = stage.model
    lora = set(lora_names(model))
    assert set(stage.trainable) == lora | {n for n, _ in model.named_parameters() if n.startswith("adapter.")}
    train_lora(model)  # B ≠ 0, so A gets gradients too
    b = Collator(stage.processor, "reasoning")([generate(i, "train")[0] for i in range(2)])
    model(b["input_ids"], b["attention_mask"], b["pixel_values"], b["labels"]).loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == set(stage.trainable)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n not in set(stage.trainable))


def test_the_reference_is_the_base_with_lora_off_plus_the_initial_adapter(fresh):
    from r1v.rl.grpo import LoraReference, reference_for

    model, processor = fresh()
    b = batch(processor)
    base = logits(model, b)
    apply_lora(model, SPEC)
    trainable = [*lora_names(model), *(n for n, _ in model.named_parameters() if n.startswith("adapter."))]
    ref = reference_for(model, trainable)
    assert isinstance(ref, LoraReference) and not ref.rest.initial.keys() & set(lora_names(model))
    with ref.active():
        assert torch.equal(logits(model, b), base)  # step 0: reference = policy (KL 0)
    train_lora(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("adapter."):
                p.add_(0.01)
    trained = logits(model, b)
    assert not torch.allclose(trained, base)
    with ref.active():
        assert torch.equal(logits(model, b), base)  # LoRA off + the initial adapter: the starting policy
    assert torch.equal(logits(model, b), trained)  # and back
    with lora_disabled(model):
        assert not torch.allclose(logits(model, b), base)  # LoRA off alone keeps the trained adapter


def test_static_engine_greedy_equals_hf_with_lora(fresh, registry, one_thread):
    """The static engine reads W + (α/r)·B·A (merged buffers refreshed per rollout): greedy ids equal transformers'
    generate through PEFT's layers, and differ from the base's (LoRA is really applied)."""
    model, processor = fresh("model=tiny_reasoner")
    apply_lora(model, SPEC)
    train_lora(model, std=0.3)
    samples = [generate(i, "val")[0] for i in range(4)]
    hf = registry.build("rollout", "hf").generate_ids(model, processor, samples, 24, greedy=True)
    engine = registry.build("rollout", "static")
    assert engine.generate_ids(model, processor, samples, 24, greedy=True) == hf
    with lora_disabled(model):
        base = registry.build("rollout", "hf").generate_ids(model, processor, samples, 24, greedy=True)
        assert engine.generate_ids(model, processor, samples, 24, greedy=True) == base
    assert base != hf
    train_lora(model, seed=2, std=0.3)  # an optimizer step later: the buffers are recomputed
    assert engine.generate_ids(model, processor, samples, 24, greedy=True) == registry.build(
        "rollout", "hf").generate_ids(model, processor, samples, 24, greedy=True)  # fmt: skip


def test_merged_export_reproduces_the_unmerged_logits(fresh, tmp_path):
    """InternViT → mlp → Qwen2 with LoRA on both: the merged export, re-imported, gives the LoRA model's logits; the
    unmerged export is the base plus a PEFT adapter folder that gives them back."""
    import json

    from safetensors.torch import load_file

    from r1v.model.handle import Model
    from r1v.model.internvl import RENAME, build_from_folder, to_r1v

    model, processor = fresh("vision=internvit_tiny", "backbone=tiny_reasoner")
    b = batch(processor)
    base = logits(model, b)
    apply_lora(model, SPEC)
    train_lora(model)
    ours = logits(model, b)
    state = {n: p.detach().clone() for n, p in model.named_parameters()}

    merge_lora(model)
    assert not lora_layers(model)
    Model(model, processor, {"model": {}}).export(tmp_path / "merged")
    again, proc2 = build_from_folder(tmp_path / "merged")
    torch.testing.assert_close(logits(again.eval(), batch(proc2)), ours, rtol=1e-4, atol=1e-4)

    model, processor = fresh("vision=internvit_tiny", "backbone=tiny_reasoner")
    apply_lora(model, SPEC)
    model.load_state_dict(state, strict=False)  # the tied LM head is the embedding
    Model(model, processor, {"model": {}, "lora": SPEC.to_node()}).export(tmp_path / "apart")
    plain, proc3 = build_from_folder(tmp_path / "apart")
    torch.testing.assert_close(logits(plain.eval(), batch(proc3)), base, rtol=0, atol=0)  # the base, untouched
    config = json.loads((tmp_path / "apart" / "lora" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 16.0)
    assert "language_model.model.layers.0.self_attn.q_proj" in config["target_modules"]
    weights = load_file(str(tmp_path / "apart" / "lora" / "adapter_model.safetensors"))
    apply_lora(plain, SPEC)
    plain.load_state_dict({to_r1v(k.removeprefix("base_model.model."), RENAME).replace(".weight", ".default.weight"): v
                           for k, v in weights.items()}, strict=False)  # fmt: skip
    torch.testing.assert_close(logits(plain.eval(), batch(proc3)), ours, rtol=0, atol=0)


@pytest.mark.parametrize(("node", "message"), [
    ({"r": 8, "targets": ["q_prj"]}, "'q_prj' matches no linear layer (use backbone, vision, or a glob over module "
                                     "names; linear layers here: "),
    ({"r": 8, "targets": ["q_prj"]}, "did you mean 'q_proj'?"),
    ({"r": 8, "targets": ["backbone.model.layers.9.*"]}, "matches no linear layer"),
    ({"r": 100}, "stage.lora.r=100: larger than the width of backbone.model.layers.0.self_attn.k_proj (128 → 64)"),
    ({"alpah": 8}, "stage.lora.alpah: not a LoRA setting (allowed: r, alpha, dropout, targets) — did you mean "
                   "'alpha'?"),
    ({"r": 0}, "stage.lora.r=0: must be a whole number ≥ 1"),
    ({"r": 8, "dropout": 1.5}, "stage.lora.dropout=1.5: must be in [0, 1)"),
    ({"r": 8, "alpha": -1}, "stage.lora.alpha=-1: must be a number > 0"),
])  # fmt: skip
def test_bad_lora_settings_are_one_line(fresh, node, message):
    model, _ = fresh()
    with pytest.raises(ConfigError) as e:
        apply_lora(model, LoraSpec.from_node(node))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not lora_layers(model)  # refused before anything was injected


def test_a_bad_lora_target_stops_training_in_one_line(tmp_path):
    from tests.conftest import one_error_line, run_cli

    proc = run_cli(["stage=sft", "stage.lora={r: 8, targets: [mlp.gate]}", "stage.max_steps=1", "run=bad"], tmp_path)
    line = one_error_line(proc)
    assert "stage.lora.targets: 'mlp.gate' matches no linear layer" in line and "gate_proj" in line


def test_inspect_counts_lora_and_says_when_it_makes_a_composition_fit():
    from r1v.cli.describe import inspect

    args = ["model=r1v_small", "backbone=qwen2_5_7b", "stage=sft", "stage.lora={r: 64, targets: [backbone]}",
            "planner.gpus=1", "planner.gpu_gb=80", "planner.seq_len=4096", "planner.ckpt=all"]  # fmt: skip
    lines = inspect([*args, "planner.zero=2"])  # DeepSpeed: fp32 masters and moments, 16 B per trained weight
    lora = next(line for line in lines if line.startswith("LoRA r=64 alpha=128 on 196 linear layers"))
    assert "161,480,704 (0.161B) LoRA parameters train in place of those layers' 6,525,288,448" in lora
    assert "27.2 GiB with LoRA vs 122.1 GiB without LoRA" in "\n".join(lines) and "LoRA makes it fit" in "\n".join(
        lines
    )
    # no DeepSpeed (trainer=gpu): the bf16 backbone trains with Kahan AdamW, 10 B per weight, and fits whole too
    assert "26.9 GiB with LoRA vs 73.4 GiB without LoRA" in "\n".join(inspect(args))
    assert "total          8,108,649,984     8.11B       189,021,184" in "\n".join(lines)  # LoRA + adapter train


def test_a_bad_lora_value_is_refused_when_the_config_is_checked(compose):
    from r1v.core.config import check_types

    check_types(compose("stage=grpo", "stage.lora={r: 4}"))
    with pytest.raises(ConfigError, match=r"^stage.lora.dropout=1.5: must be in \[0, 1\)$"):
        check_types(compose("stage=mpo", "stage.lora={r: 4, dropout: 1.5}"))


def test_mpo_with_lora_uses_the_lora_off_reference(compose):
    from r1v.rl.grpo import LoraReference
    from r1v.stages.mpo import MPOStage

    stage = MPOStage(compose("stage=mpo", "data=synthetic_pairs", "stage.lora={r: 4, targets: [q_proj, v_proj]}"))
    stage.configure_model()
    assert isinstance(stage.reference, LoraReference)
    assert {n.rsplit(".", 1)[-1] for n in lora_layers(stage.model)} == {"q_proj", "v_proj"}


def test_lora_weights_load_merged_kept_or_into_existing_layers(fresh, tmp_path):
    """A LoRA run's trainable weights (the file export_trainable writes, spec in its metadata): merged into the base
    by default (inference, a stage without that LoRA), kept when the loading stage continues the same LoRA, and
    loaded into the LoRA layers a model already has (iterative SFT's next round)."""
    from safetensors.torch import save_file

    from r1v.model.load import checkpoint_lora, load_trainable
    from r1v.model.lora import METADATA_KEY

    model, processor = fresh()
    b = batch(processor)
    apply_lora(model, SPEC)
    train_lora(model)
    ours = logits(model, b)
    path = tmp_path / "trainable.safetensors"
    save_file({n: p.detach() for n, p in model.named_parameters() if ".lora_" in n or n.startswith("adapter.")},
              str(path), metadata={METADATA_KEY: SPEC.to_json()})  # fmt: skip
    assert checkpoint_lora(str(path)) == SPEC
    merged, _ = fresh()
    assert load_trainable(merged, str(path)) is None and not lora_layers(merged)
    torch.testing.assert_close(logits(merged, b), ours, rtol=1e-4, atol=1e-4)
    kept, _ = fresh()
    assert load_trainable(kept, str(path), keep_lora=SPEC) == SPEC and lora_layers(kept)
    assert torch.equal(logits(kept, b), ours)
    train_lora(kept, seed=5)  # the next round's LoRA layers, trained on: loading goes into them, nothing merges
    load_trainable(kept, str(path))
    assert len(lora_layers(kept)) == len(lora_layers(model)) and torch.equal(logits(kept, b), ours)

"""Backbones: a local Hugging Face folder loads to the same model; bad folders get one line."""

from __future__ import annotations

import pytest
import torch


def test_hf_folder_round_trip(registry, tmp_path):
    tiny = registry.build("backbone", "tiny_instruct")
    tiny.tokenizer.chat_template = tiny.chat_template
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = registry.build("backbone", "hf", path=str(tmp_path), dtype="float32")
    ids = tiny.tokenizer("<｜User｜>How many shapes?<｜Assistant｜><think>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, tiny.model.eval()(ids).logits)
    assert loaded.chat_template == tiny.chat_template and loaded.hidden_size == tiny.hidden_size


def test_folder_without_config_is_one_line(registry, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        registry.build("backbone", "hf", path=str(tmp_path))
    assert "is not a model folder (no config.json there)" in str(e.value) and "\n" not in str(e.value)


def test_tokenizer_without_chat_template_is_one_line(registry, tmp_path):
    from r1v.model.build import ModelConfigError

    tiny = registry.build("backbone", "tiny_instruct")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)  # no template saved with it
    with pytest.raises(ModelConfigError) as e:
        registry.build("backbone", "hf", path=str(tmp_path), dtype="float32")
    assert "has no chat template; set model.backbone.chat_template=" in str(e.value) and "\n" not in str(e.value)
    ok = registry.build("backbone", "hf", path=str(tmp_path), dtype="float32", chat_template=tiny.chat_template)
    assert ok.chat_template == tiny.chat_template


@pytest.fixture
def saved_tiny(registry, tmp_path):
    tiny = registry.build("backbone", "tiny_instruct")
    tiny.model.save_pretrained(tmp_path)
    return tiny.model.eval(), tmp_path


def test_zero3_folder_loading_streams_every_tensor(saved_tiny, monkeypatch):
    """Under ZeRO-3 (simulated: no partitions on CPU, but the same code path) the model is built from the
    config and the folder's tensors streamed in; it equals from_pretrained, with cut layers skipped."""
    from transformers import Qwen2ForCausalLM

    import r1v.runtime.weights

    tiny, folder = saved_tiny
    monkeypatch.setattr(r1v.runtime.weights, "zero3_active", lambda: True)
    loaded = r1v.runtime.weights.hf_from_folder(Qwen2ForCausalLM, folder, "backbone 't'", dtype=torch.float32)
    ids = torch.arange(3, 20)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, tiny(ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight or not tiny.config.tie_word_embeddings
    from transformers import AutoModelForCausalLM

    auto = r1v.runtime.weights.hf_from_folder(AutoModelForCausalLM, folder, "backbone 'hf'", dtype=torch.float32)
    with torch.no_grad():  # backbone=hf's Auto class takes the same path
        torch.testing.assert_close(auto.eval()(ids).logits, tiny(ids).logits)

    config = Qwen2ForCausalLM.config_class.from_pretrained(folder)
    config.num_hidden_layers = 1
    later = ("model.layers.1.", "model.layers.2.", "model.layers.3.")
    cut = r1v.runtime.weights.hf_from_folder(Qwen2ForCausalLM, folder, "backbone 't'", config=config,
                                             dtype=torch.float32, skip=lambda k: k.startswith(later))  # fmt: skip
    torch.testing.assert_close(cut.model.layers[0].mlp.up_proj.weight, tiny.model.layers[0].mlp.up_proj.weight)


def test_zero3_folder_missing_tensor_is_one_line(saved_tiny, monkeypatch):
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2ForCausalLM

    import r1v.runtime.weights

    _, folder = saved_tiny
    state = load_file(str(folder / "model.safetensors"))
    del state["model.norm.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    monkeypatch.setattr(r1v.runtime.weights, "zero3_active", lambda: True)
    with pytest.raises(r1v.runtime.weights.WeightsError) as e:
        r1v.runtime.weights.hf_from_folder(Qwen2ForCausalLM, folder, "backbone 't'", dtype=torch.float32)
    assert "backbone 't'" in str(e.value) and "model.norm.weight" in str(e.value) and "\n" not in str(e.value)


def test_rotary_frequencies_stay_fp32(registry):
    """zero.Init and .to(bfloat16) round the rotary inv_freq buffer to bf16 (positions off by radians
    after a few thousand tokens); fp32_rotary recomputes it exactly."""
    from r1v.runtime.weights import fp32_rotary

    model = registry.build("backbone", "tiny_reasoner").model
    exact = model.model.rotary_emb.inv_freq.clone()
    assert exact.dtype == torch.float32 and fp32_rotary(model) == 0
    model.to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.bfloat16
    assert fp32_rotary(model) == 1
    assert torch.equal(model.model.rotary_emb.inv_freq, exact)
    assert torch.equal(model.model.rotary_emb.original_inv_freq, exact)

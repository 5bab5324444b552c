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

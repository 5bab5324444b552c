"""The Python API in ``r1v/__init__.py``: load a trained run, compose a model, list plugins."""

from __future__ import annotations

import pytest
import torch

import r1v
from r1v.data.synthetic import generate


def _scene(tmp_path, i: int = 0):
    sample = generate(i, "val")[0]
    path = tmp_path / f"scene{i}.png"
    sample.images[0].save(path)
    return sample, str(path)


def test_load_a_run_and_ask_about_an_image(default_run, tmp_path):
    """``r1v.load(run)`` brings the run's own composition and weights; it answers as the loader + fastest engine."""
    from r1v.evaluation.answers import extract_answer
    from r1v.generation.choose import fastest_engine
    from r1v.model.load import inference_config, load_for_inference

    model = r1v.load(str(default_run), device="cpu")
    assert model.parts == {"vision": "tiny", "adapter": "mlp", "backbone": "tiny_instruct"}
    sample, path = _scene(tmp_path)
    question = sample.question.replace("<image>\n", "")
    text = model.generate(question, images=[path], max_new_tokens=24)
    vlm, processor, _ = load_for_inference(inference_config(str(default_run), [], "cpu"))
    engine, _ = fastest_engine(vlm)
    assert text == engine.generate(vlm, processor, [sample], 24, greedy=True)[0]
    chunks: list[str] = []
    turn = model.chat(question, images=[path], max_new_tokens=24, stream=chunks.append)
    assert turn["completion"] == text == "".join(chunks)  # streamed piece by piece, the same text
    assert turn["answer"] == extract_answer(text) is not None and turn["closed_think"] is False  # a direct answerer
    several = model.generate([generate(i, "val")[0] for i in range(3)], max_new_tokens=8)
    assert isinstance(several, list) and len(several) == 3


def test_create_model_by_preset_or_parts():
    big = r1v.create_model("r1v38b", device="meta")  # shapes only, seconds
    assert sum(p.numel() for p in big.vlm.parameters()) == 38_392_158_592
    assert big.parts["backbone"] == "r1_distill_qwen_32b"
    tiny = r1v.create_model(vision="tiny", backbone="tiny_reasoner")
    assert tiny.parts == {"vision": "tiny", "adapter": "mlp", "backbone": "tiny_reasoner"}
    assert isinstance(tiny.generate(generate(0, "val")[0], max_new_tokens=4), str)
    with pytest.raises(ValueError, match="unknown part 'visoin'"):
        r1v.create_model(visoin="tiny")


def test_bad_images_and_names_are_one_line(tmp_path):
    from r1v.core.errors import DataError, RegistryError

    tiny = r1v.create_model()
    with pytest.raises(FileNotFoundError, match=r"image .*missing\.png does not exist"):
        tiny.generate("How many?", images=[str(tmp_path / "missing.png")])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"bad\.png cannot be read as an image"):
        tiny.generate("How many?", images=[str(tmp_path / "bad.png")])
    with pytest.raises(RegistryError, match="did you mean"):
        r1v.list_plugins("visoin")


def test_list_plugins():
    vision = {p["name"]: p for p in r1v.list_plugins("vision")}
    assert {"tiny", "internvit_6b", "siglip"} <= set(vision)
    assert vision["tiny"]["provider"].startswith("r1v ") and "pretrained" in vision["tiny"]["knobs"]
    kinds = {p["kind"] for p in r1v.list_plugins()}
    assert {"vision", "adapter", "backbone", "reward", "stage", "rollout"} <= kinds


def test_weights_of_another_composition_are_refused_in_one_line(default_run, tmp_path):
    """Loading for inference refuses a weights file with tensors the model has no place for, instead of silently
    loading the rest (a checkpoint of another composition would otherwise run with untrained parts)."""
    from safetensors.torch import load_file, save_file

    from r1v.core.errors import WeightsError

    state = load_file(str(default_run / "final" / "trainable.safetensors"))
    save_file({**state, "adapter.extra.weight": torch.zeros(2)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(
        WeightsError, match=r"holds weights the model does not have, e\.g\. adapter\.extra\.weight"
    ) as e:
        r1v.load(tmp_path / "odd.safetensors", device="cpu")
    assert "\n" not in str(e.value)
    save_file(state, str(tmp_path / "same.safetensors"))  # the same tensors alone load, into the default composition
    assert r1v.load(tmp_path / "same.safetensors", device="cpu").parts["adapter"] == "mlp"

"""The Python API in ``r1v/__init__.py``: load a trained run, compose a model, list plugins."""

from __future__ import annotations

import pytest

import r1v
from r1v.data.synthetic import generate


def _scene(tmp_path, i: int = 0):
    sample = generate(i, "val")[0]
    path = tmp_path / f"scene{i}.png"
    sample.images[0].save(path)
    return sample, str(path)


def test_load_a_run_and_ask_about_an_image(default_run, tmp_path):
    """``r1v.load(run)`` brings the run's own composition and weights; its answers are the CLI loader's."""
    from r1v.cli.infer import load_model
    from r1v.evaluation.answers import extract_answer
    from r1v.generation.choose import fastest_engine

    model = r1v.load(str(default_run), device="cpu")
    assert model.parts == {"vision": "tiny", "adapter": "mlp", "backbone": "tiny_instruct"}
    sample, path = _scene(tmp_path)
    question = sample.question.replace("<image>\n", "")
    text = model.generate(question, images=[path], max_new_tokens=24)
    vlm, processor, _ = load_model(str(default_run), [], "cpu")
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

"""InternVL-chat / Skywork-R1V folders: import, lossless export, one-line errors, ``model.internvl=``, ``r1v export``.

The source folder is written here: a reduced-depth random InternVL-chat checkpoint (tiny InternViT, mlp1, a
2-layer 64-wide Qwen2, the tiny tokenizer with the R1 chat template), its weights split over two shards.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1v.data.synthetic import generate
from r1v.model.build import ModelConfigError
from r1v.model.internvl import build_from_folder, export_folder, iter_tensors, read_config
from r1v.model.parts import tiny
from r1v.runtime.weights import WeightsError
from tests.conftest import run_cli

VISION = dict(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, qkv_bias=False, qk_normalization=True, norm_type="rms_norm",
              layer_norm_eps=1e-6, hidden_act="gelu", num_channels=3)  # fmt: skip
LLM_HIDDEN = 64


def llm_config(vocab: int, hidden: int = LLM_HIDDEN) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": vocab, "max_position_embeddings": 512, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False, "torch_dtype": "float32"}  # fmt: skip


def random_state(vocab: int) -> dict[str, torch.Tensor]:
    """InternVL-named random weights (InternViT + mlp1 + Qwen2ForCausalLM), every tensor randomised."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1v.model.parts.internvit import from_config
    from r1v.model.parts.mlp import MLPAdapter

    torch.manual_seed(0)
    parts = {
        "vision_model.": from_config(VISION),
        "mlp1.": MLPAdapter(VISION["hidden_size"], LLM_HIDDEN, 0.5, "v2"),
        "language_model.": Qwen2ForCausalLM(Qwen2Config(**llm_config(vocab))),
    }
    state = {}
    for prefix, module in parts.items():
        for key, t in module.state_dict().items():
            state[prefix + key] = (t + 0.02 * torch.randn_like(t)).contiguous()  # norms and layer scales too
    return state


def write_folder(folder: Path, ps_version: str | None = "v2") -> Path:
    folder.mkdir(parents=True)
    tok = tiny.tokenizer()
    tok.chat_template = tiny.template("r1")
    tok.save_pretrained(str(folder))
    state = random_state(len(tok))
    config = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "vision_config": VISION,
              "llm_config": llm_config(len(tok)), "downsample_ratio": 0.5, "select_layer": -1,
              "force_image_size": 64, "template": "internvl2_5", "dynamic_image_size": False,
              "max_dynamic_patch": 6, "use_thumbnail": False, "torch_dtype": "float32"}  # fmt: skip
    if ps_version:
        config["ps_version"] = ps_version
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shards = {
        "model-00001-of-00002.safetensors": [k for k in state if not k.startswith("language_model.")],
        "model-00002-of-00002.safetensors": [k for k in state if k.startswith("language_model.")],
    }
    for file, names in shards.items():
        save_file({n: state[n] for n in names}, str(folder / file), metadata={"format": "pt"})
    weight_map = {n: f for f, names in shards.items() for n in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("internvl") / "src")


def variant(source: Path, tmp_path: Path) -> Path:
    """A copy of the source folder to break."""
    return Path(shutil.copytree(source, tmp_path / "variant"))


def edit_config(folder: Path, fn) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def logits(model, processor) -> torch.Tensor:
    samples = [generate(i, "val")[0] for i in range(2)]
    batch = processor.collate([processor.encode(s, "answer") for s in samples], "right")
    with torch.no_grad():
        return model.eval()(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return dict(iter_tensors(folder))


def test_import_runs_and_export_is_lossless(source, tmp_path):
    model, proc = build_from_folder(source)
    assert (proc.image_size, proc.tokens_per_tile, proc.max_tiles) == (64, 16, 1)  # (64/8 · 0.5)² tokens
    assert model.adapter.ps_version == "v2" and model.vision.select_layer == -1
    out = logits(model, proc)
    assert out.shape[-1] == len(proc.tokenizer) and torch.isfinite(out).all()

    export_folder(model, proc.tokenizer, tmp_path / "out", read_config(source), chat_template=proc.chat_template)
    src, exp = tensors(source), tensors(tmp_path / "out")
    assert sorted(src) == sorted(exp)
    for name, t in src.items():  # bit-identical, tensor by tensor
        assert exp[name].dtype == t.dtype and torch.equal(exp[name].view(torch.uint8), t.view(torch.uint8)), name
    cfg_src, cfg_out = read_config(source), read_config(tmp_path / "out")
    assert cfg_out == cfg_src
    assert not list(tmp_path.glob("out.tmp-*"))

    again, proc2 = build_from_folder(tmp_path / "out")
    assert proc2.chat_template == proc.chat_template
    assert torch.equal(logits(again, proc2), out)


def test_export_shards_and_refuses_to_overwrite(source, tmp_path):
    model, proc = build_from_folder(source)
    export_folder(model, proc.tokenizer, tmp_path / "out", read_config(source), shard_size_bytes=200_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((tmp_path / "out" / f).is_file() for f in files)
    assert sorted(tensors(tmp_path / "out")) == sorted(tensors(source))
    with pytest.raises(FileExistsError):
        export_folder(model, proc.tokenizer, tmp_path / "out", read_config(source))
    export_folder(model, proc.tokenizer, tmp_path / "out", read_config(source), overwrite=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()


def test_export_of_a_composed_model_generates_its_config(compose, registry, tmp_path):
    """InternViT + mlp + a Qwen2 with tied embeddings, composed from parts: config.json is generated from the model."""
    from r1v.model.build import build

    torch.manual_seed(0)
    model, proc = build(compose("vision=internvit_tiny", "backbone=tiny_reasoner")["model"], registry)
    export_folder(model, proc.tokenizer, tmp_path / "out", None, chat_template=proc.chat_template,
                  max_tiles=proc.max_tiles, use_thumbnail=proc.use_thumbnail)  # fmt: skip
    cfg = read_config(tmp_path / "out")
    assert cfg["vision_config"]["hidden_size"] == 64 and cfg["llm_config"]["tie_word_embeddings"] is True
    assert (cfg["ps_version"], cfg["downsample_ratio"], cfg["force_image_size"]) == ("v2", 0.5, 64)
    exported = tensors(tmp_path / "out")
    assert "language_model.lm_head.weight" not in exported  # tied to the embeddings, as save_pretrained does
    ours = {k: v for k, v in model.state_dict().items() if k != "backbone.lm_head.weight"}
    assert sorted(exported) == sorted(k.replace("vision.", "vision_model.", 1).replace("adapter.", "mlp1.", 1)
                                      .replace("backbone.", "language_model.", 1) for k in ours)  # fmt: skip
    again, proc2 = build_from_folder(tmp_path / "out")
    assert torch.equal(logits(again, proc2), logits(model, proc))


def test_missing_ps_version_warns_with_the_default(source, tmp_path, caplog):
    folder = variant(source, tmp_path)
    edit_config(folder, lambda c: c.pop("ps_version"))
    with caplog.at_level(logging.WARNING, logger="r1v.model.internvl"):
        cfg = read_config(folder)
    assert cfg["ps_version"] == "v1"
    text = caplog.text
    assert str(folder) in text and "'v1'" in text and "never guessed" in text


def test_no_config_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        build_from_folder(tmp_path / "empty")
    msg = one_line(e)
    assert str(tmp_path / "empty") in msg and "config.json" in msg


def test_not_internvl_and_missing_llm_config(source, tmp_path):
    folder = variant(source, tmp_path)
    edit_config(folder, lambda c: c.update(model_type="qwen2"))
    with pytest.raises(ModelConfigError) as e:
        read_config(folder)
    assert "'qwen2'" in one_line(e) and "internvl_chat" in str(e.value)
    edit_config(folder, lambda c: (c.update(model_type="internvl_chat"), c.pop("llm_config")))
    with pytest.raises(ModelConfigError) as e:
        read_config(folder)
    assert "llm_config" in one_line(e) and str(folder) in str(e.value)


def test_hidden_size_mismatch_names_key_and_both_shapes(source, tmp_path):
    folder = variant(source, tmp_path)
    edit_config(folder, lambda c: c["llm_config"].update(hidden_size=128))
    with pytest.raises(WeightsError) as e:
        build_from_folder(folder)
    msg = one_line(e)
    assert "mlp1.1.bias has shape (64,) in the weights but (128,) from config.json" in msg, msg


def test_missing_adapter_weights_are_named(source, tmp_path):
    folder = variant(source, tmp_path)
    shard = folder / "model-00001-of-00002.safetensors"
    state = {k: v for k, v in load_file(str(shard)).items() if not k.startswith("mlp1.")}
    save_file(state, str(shard))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith("mlp1.")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError) as e:
        build_from_folder(folder)
    msg = one_line(e)
    assert "missing 6" in msg and "mlp1.0.weight" in msg and "mlp1.1.weight" in msg
    model, _ = build_from_folder(folder, allow_missing=True)  # a fresh adapter, the rest loaded
    assert torch.equal(
        model.vision.embeddings.class_embedding, load_file(str(shard))["vision_model.embeddings.class_embedding"]
    )


def test_missing_shard_file_is_named(source, tmp_path):
    folder = variant(source, tmp_path)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as e:
        build_from_folder(folder)
    assert "model-00002-of-00002.safetensors" in one_line(e)


def test_tokenizer_without_chat_template(source, tmp_path):
    folder = variant(source, tmp_path)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelConfigError) as e:
        build_from_folder(folder)
    assert "no chat template" in one_line(e) and "model.chat_template" in str(e.value)
    _, proc = build_from_folder(folder, chat_template=tiny.template("r1"))
    assert proc.chat_template == tiny.template("r1")


def test_model_internvl_switches_the_build(source, compose, registry, caplog):
    from r1v.model.build import build

    cfg = compose("model=internvl_chat", f"model.internvl={source}")
    with caplog.at_level(logging.INFO, logger="r1v.model.internvl"):
        model, _ = build(cfg["model"], registry)
    assert type(model.vision).__name__ == "InternViT" and model.backbone.config.hidden_size == LLM_HIDDEN
    assert "model.vision (tiny)" in caplog.text and "ignored" in caplog.text
    cfg = compose("model=tiny", f"model.internvl={source}")  # any preset accepts the key
    model, _ = build(cfg["model"], registry)
    assert model.backbone.config.hidden_size == LLM_HIDDEN


def test_export_command_errors_are_one_line(tmp_path, capsys):
    from r1v.__main__ import main

    (tmp_path / "neither").mkdir()
    assert main(["export", str(tmp_path / "neither"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "neither a run folder" in err
    assert main(["export", str(tmp_path / "nonexistent"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.slow
def test_train_then_export_a_run(source, tmp_path):
    proc = run_cli(["model=internvl_chat", f"model.internvl={source}", "stage=sft", "stage.max_steps=2",
                    "stage.val_every=1000", "stage.val_generate=0", "stage.batch_size=2", "data.n_train=8",
                    "data.n_val=2", "logger=csv", "trainer.enable_progress_bar=false", f"paths.runs={tmp_path}",
                    "run=r"], cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "r"
    prov = json.loads((run / "run.json").read_text())
    assert prov["internvl"] == str(source) and "vision" not in prov["components"]  # the ignored parts are not recorded
    proc = run_cli(["export", str(run), str(tmp_path / "out"), "--shard-size", "300KB"], cwd=tmp_path,
                   module="r1v", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported, src = tensors(tmp_path / "out"), tensors(source)
    trained = load_file(str(run / "final" / "trainable.safetensors"))
    assert sorted(trained) == sorted(k.replace("mlp1.", "adapter.") for k in src if k.startswith("mlp1."))
    assert sorted(exported) == sorted(src)
    for name, t in exported.items():
        if name.startswith("mlp1."):
            assert torch.equal(t, trained[name.replace("mlp1.", "adapter.")]), name
            assert not torch.equal(t, src[name]), f"{name} did not train"
        else:
            assert torch.equal(t, src[name]), name
    assert read_config(tmp_path / "out") == read_config(source)


def test_the_api_exports_what_the_cli_exports(source, tmp_path):
    """``r1v.load(folder).export(out)`` and ``python -m r1v export`` write the same tensors and config (the CLI verb
    is a shell over the API)."""
    import r1v
    from r1v.__main__ import main

    r1v.load(source, device="cpu").export(tmp_path / "api", shard_size="300KB")
    assert main(["export", str(source), str(tmp_path / "cli"), "--shard-size", "300KB"]) == 0
    api, cli = tensors(tmp_path / "api"), tensors(tmp_path / "cli")
    assert sorted(api) == sorted(cli) == sorted(tensors(source))
    assert all(torch.equal(api[k], cli[k]) for k in api)
    assert read_config(tmp_path / "api") == read_config(tmp_path / "cli") == read_config(source)
    assert len(list((tmp_path / "api").glob("model-*.safetensors"))) > 1  # "300KB" was parsed and applied

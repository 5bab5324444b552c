"""Model zoo presets: Qwen2 backbones with published shapes (meta device), R1V-38B part sizes, local-folder
checks, depth cuts, and ``python -m r1v inspect`` end to end."""

from __future__ import annotations

import json
import time

import pytest
import torch

from r1v.model.parts import qwen2
from r1v.model.parts.qwen2 import PRESETS, PresetMismatchError
from r1v.model.parts.tiny import tokenizer as tiny_tokenizer
from tests.conftest import run_cli

# Published shapes (config.json of each checkpoint), written out here so the presets are checked independently:
# (layers, hidden, intermediate, heads, kv heads, vocab, tied, published parameter count).
PUBLISHED = {
    "r1_distill_qwen_32b": (64, 5120, 27648, 40, 8, 152064, False, 32.76e9),
    "qwen2_5_32b_instruct": (64, 5120, 27648, 40, 8, 152064, False, 32.76e9),
    "qwq_32b": (64, 5120, 27648, 40, 8, 152064, False, 32.76e9),
    "qwen2_5_0_5b": (24, 896, 4864, 14, 2, 151936, True, 0.494e9),
    "qwen2_5_1_5b": (28, 1536, 8960, 12, 2, 151936, True, 1.544e9),
    "qwen2_5_7b": (28, 3584, 18944, 28, 4, 152064, False, 7.616e9),
    "r1_distill_qwen_1_5b": (28, 1536, 8960, 12, 2, 151936, False, 1.777e9),
}


def qwen2_count(layers: int, h: int, inter: int, heads: int, kv_heads: int, vocab: int, tied: bool) -> int:
    """Qwen2ForCausalLM parameters from its shapes."""
    kv = kv_heads * (h // heads)
    layer = (
        h * h + h  # q_proj (with bias)
        + 2 * (h * kv + kv)  # k_proj, v_proj (with bias)
        + h * h  # o_proj (no bias)
        + 3 * h * inter  # gate_proj, up_proj, down_proj (no bias)
        + 2 * h  # input_layernorm, post_attention_layernorm
    )  # fmt: skip
    return vocab * h + layers * layer + h + (0 if tied else vocab * h)  # embeddings, layers, final norm, lm_head


def test_every_qwen2_preset_is_listed_here(registry):
    assert set(PRESETS) == set(PUBLISHED)
    assert set(PRESETS) <= set(registry.names("backbone"))
    for name in PRESETS:
        assert registry.get("backbone", name).description


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts_on_meta_device(name, registry):
    layers, h, inter, heads, kv_heads, vocab, tied, published = PUBLISHED[name]
    start = time.perf_counter()
    with torch.device("meta"):
        backbone = registry.build("backbone", name)
    seconds = time.perf_counter() - start
    n = sum(p.numel() for p in backbone.model.parameters())
    exact = qwen2_count(layers, h, inter, heads, kv_heads, vocab, tied)
    print(f"{name}: {n:,} parameters (from shapes {exact:,}), built in {seconds:.1f} s")
    assert n == exact
    assert n == pytest.approx(published, rel=0.002)
    c = backbone.model.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (layers, h, inter)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size, c.tie_word_embeddings) == (
        heads, kv_heads, vocab, tied)  # fmt: skip
    assert backbone.model.dtype == torch.bfloat16 and backbone.model.model.layers[0].self_attn.q_proj.bias is not None
    assert seconds < 30


def test_published_hyperparameters():
    r1 = PRESETS["r1_distill_qwen_32b"].config
    assert (r1["rope_theta"], r1["rms_norm_eps"], r1["bos_token_id"], r1["eos_token_id"]) == (1e6, 1e-5, 151643, 151643)
    assert r1["max_position_embeddings"] == 131072
    assert PRESETS["qwen2_5_32b_instruct"].config["rms_norm_eps"] == 1e-6
    assert PRESETS["qwq_32b"].config["rms_norm_eps"] == 1e-5


@pytest.mark.parametrize(("name", "reasoning"), [("r1_distill_qwen_32b", True), ("qwq_32b", True),
                                                 ("qwen2_5_32b_instruct", False), ("qwen2_5_1_5b", False)])  # fmt: skip
def test_chat_template_and_reasoning_flag(name, reasoning, registry):
    with torch.device("meta"):
        backbone = registry.build("backbone", name)
    assert backbone.reasoning is reasoning
    messages = [{"role": "user", "content": "Q"}]
    prompt = backbone.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=backbone.chat_template,
                                                    add_generation_prompt=True)  # fmt: skip
    assert prompt.endswith("<think>\n") is reasoning


def test_depth_cut(registry):
    with torch.device("meta"):
        backbone = registry.build("backbone", "qwen2_5_7b", num_hidden_layers=2)
    _, h, inter, heads, kv_heads, vocab, tied, _ = PUBLISHED["qwen2_5_7b"]
    assert sum(p.numel() for p in backbone.model.parameters()) == qwen2_count(2, h, inter, heads, kv_heads, vocab, tied)
    assert len(backbone.model.config.layer_types) == 2
    with pytest.raises(ValueError, match=r"num_hidden_layers 29 is not in 1\.\.28"):
        registry.build("backbone", "qwen2_5_7b", num_hidden_layers=29)


def test_folder_with_other_shapes_is_one_line_naming_both(registry, tmp_path):
    cfg = {"model_type": "qwen2", **{k: PRESETS["qwen2_5_1_5b"].config[k] for k in qwen2.SHAPE_KEYS}}
    cfg["hidden_size"] = 1024
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PresetMismatchError) as e:
        registry.build("backbone", "qwen2_5_1_5b", pretrained=str(tmp_path))
    msg = str(e.value)
    print(msg)
    assert "\n" not in msg and "hidden_size 1024 but the preset has 1536" in msg and "backbone=hf" in msg
    with pytest.raises(FileNotFoundError, match=r"no config\.json there"):
        registry.build("backbone", "qwen2_5_1_5b", pretrained=str(tmp_path / "missing"))


def test_matching_folder_builds_on_meta_without_reading_weights(registry, tmp_path):
    cfg = {"model_type": "qwen2", **PRESETS["qwen2_5_0_5b"].config}
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # no weights, no tokenizer: shapes only on meta
    with torch.device("meta"):
        backbone = registry.build("backbone", "qwen2_5_0_5b", pretrained=str(tmp_path), tokenizer=None)
    assert backbone.model.config.hidden_size == 896
    assert backbone.tokenizer.get_vocab() == tiny_tokenizer().get_vocab()  # no tokenizer there: shapes only
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"), torch.device("meta"):
        registry.build("backbone", "qwen2_5_0_5b", tokenizer=str(tmp_path))


def test_local_folder_loads_weights_and_cuts_depth(monkeypatch, tmp_path):
    """A tiny preset (same code path as the real ones): a full folder loads; a depth cut keeps its first layers."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1v.model.parts import tiny as tiny_parts

    tok = tiny_parts.tokenizer()
    shapes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=len(tok), tie_word_embeddings=False)  # fmt: skip
    monkeypatch.setitem(PRESETS, "test_tiny", qwen2.Preset("test/tiny", {**shapes, "rope_theta": 1e4},
                                                           reasoning=True, template="r1"))  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**shapes)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    saved = Qwen2ForCausalLM.from_pretrained(tmp_path)
    full = qwen2.qwen2("test_tiny", pretrained=str(tmp_path), dtype="float32")
    cut = qwen2.qwen2("test_tiny", pretrained=str(tmp_path), dtype="float32", num_hidden_layers=2)
    assert len(cut.model.model.layers) == 2 and len(full.model.model.layers) == 3
    for a, b in ((full.model, saved), (cut.model, saved)):
        torch.testing.assert_close(a.model.layers[1].mlp.up_proj.weight, b.model.layers[1].mlp.up_proj.weight)
        torch.testing.assert_close(a.lm_head.weight, b.lm_head.weight)
    text = "<｜User｜>How many shapes?<｜Assistant｜><think>\n"
    assert full.tokenizer(text)["input_ids"] == tok(text)["input_ids"]  # the folder's tokenizer
    assert full.chat_template == tiny_parts.template("r1") and full.reasoning


def test_r1v38b_part_sizes(compose, registry):
    from r1v.model.meta import build_on_meta, count

    vlm = build_on_meta(compose("model=r1v38b"))
    sizes = {p: count(getattr(vlm, p))[0] for p in ("vision", "adapter", "backbone")}
    total, trainable = count(vlm)
    print(sizes, total, trainable)
    assert sizes["vision"] == pytest.approx(5.54e9, rel=0.005)
    assert sizes["adapter"] == pytest.approx(0.092e9, rel=0.005)
    assert sizes["backbone"] == pytest.approx(32.76e9, rel=0.005)
    assert total == pytest.approx(38.39e9, rel=0.005) and total == sum(sizes.values())
    assert trainable == sizes["adapter"]  # stage=align: adapter only


@pytest.mark.parametrize(("model", "backbone"), [("r1v38b_substitute", "qwen2_5_32b_instruct"),
                                                 ("r1v2_38b", "qwq_32b"), ("r1v_small", "qwen2_5_1_5b")])  # fmt: skip
def test_model_presets_choose_parts(compose, model, backbone):
    cfg = compose(f"model={model}")
    assert cfg["model"]["backbone"]["name"] == backbone and cfg["model"]["preset"] == model
    assert cfg["model"]["adapter"]["ps_version"] == "v2" and cfg["model"]["adapter"]["downsample_ratio"] == 0.5


def test_inspect_command_prints_counts_and_plan(tmp_path):
    start = time.perf_counter()
    proc = run_cli(["inspect", "model=r1v38b", "trainer=deepspeed_z3", "stage=align"], cwd=tmp_path, module="r1v",
                   timeout=120)  # fmt: skip
    seconds = time.perf_counter() - start
    print(proc.stdout, f"\n{seconds:.1f} s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for text in ("5,536,496,000", "91,786,240", "32,763,876,352", "38,392,158,592", "38.39B", "5.54B", "0.092B",
                 "32.76B", "ZeRO-3 (from trainer.strategy.stage)", "total", "recommended"):  # fmt: skip
        assert text in out, text
    assert seconds < 60


def test_inspect_bad_planner_knob_is_one_line(tmp_path):
    proc = run_cli(["inspect", "planner.gpuz=2"], cwd=tmp_path, module="r1v", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'gpus'" in proc.stderr

"""Qwen2-family language backbones with published shapes: R1V's reasoner, its substitute, R1V2's QwQ, small ones.

Each preset is the ``config.json`` of a published checkpoint written out as a Python dict (timm/torchtune
style: numbers live here, not in YAML), built as a Hugging Face ``Qwen2ForCausalLM`` (SwiGLU MLP, q/k/v
with bias, o_proj without, RMSNorm, RoPE). The factory knobs:

- ``pretrained``: a local HF folder (config.json + safetensors [+ tokenizer]); its config is checked
  against the preset first (one error line naming both values on a mismatch), then the weights load with
  ``local_files_only``. Without it the weights are random (HF init): for shapes, ``inspect`` and tests.
- ``tokenizer``: a local tokenizer folder. Default: the ``pretrained`` folder's (required when weights are
  loaded). Without either, the tiny tokenizer of :mod:`r1v.model.parts.tiny` is used *only so that shape-only
  builds (meta device, parameter counts, memory plans) work*: its ids fit in any vocabulary, but a model
  trained with it is no use (a warning says so off the meta device).
- ``num_hidden_layers``: cut the depth (the first N layers) so an experiment fits one GPU.

Chat templates: the R1-Distill presets always use R1V's prompt (``<｜User｜>…<｜Assistant｜><think>\\n``,
the tiny ``r1`` template, whose role tokens are DeepSeek's own); QwQ and the Instruct models use the
folder tokenizer's template (ChatML; QwQ's pre-fills ``<think>\\n``), else the tiny ``r1``/``direct`` one.
Instruct models are ``reasoning=False`` (direct answers: the alignment substitute).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from r1v.core.interfaces import LanguageBackbone
from r1v.model.parts import tiny as tiny_parts
from r1v.runtime.weights import hf_from_folder

log = logging.getLogger(__name__)

# Keys that fix the parameter shapes: a folder must agree with its preset on all of them.
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "tie_word_embeddings")  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
_QWEN_32B = dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                 num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False, rope_theta=1e6,
                 bos_token_id=151643)  # fmt: skip


@dataclass(frozen=True)
class Preset:
    hf_repo: str  # the published checkpoint these shapes come from
    config: dict[str, Any]  # Qwen2Config fields (config.json)
    reasoning: bool  # R1-format completions (<think> … </think> answer)
    template: str  # "r1": always R1V's prompt; "tokenizer": the folder tokenizer's own (fallback: tiny)
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "r1_distill_qwen_32b": Preset(
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        {**_QWEN_32B, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "eos_token_id": 151643},
        reasoning=True, template="r1",
        description="DeepSeek-R1-Distill-Qwen-32B (R1V's reasoner: 64 layers, 5120 wide, ≈32.8B)",
    ),
    "qwen2_5_32b_instruct": Preset(
        "Qwen/Qwen2.5-32B-Instruct",
        {**_QWEN_32B, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "eos_token_id": 151645},
        reasoning=False, template="tokenizer",
        description="Qwen2.5-32B-Instruct (R1V's alignment substitute, same shapes as the reasoner, ≈32.8B)",
    ),
    "qwq_32b": Preset(
        "Qwen/QwQ-32B",
        {**_QWEN_32B, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "eos_token_id": 151645},
        reasoning=True, template="tokenizer",
        description="QwQ-32B (R1V2's reasoner: 64 layers, 5120 wide, ≈32.8B)",
    ),
    "qwen2_5_0_5b": Preset(
        "Qwen/Qwen2.5-0.5B-Instruct",
        dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
             max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645),
        reasoning=False, template="tokenizer",
        description="Qwen2.5-0.5B(-Instruct) shapes (24 layers, 896 wide, tied embeddings, ≈0.49B)",
    ),
    "qwen2_5_1_5b": Preset(
        "Qwen/Qwen2.5-1.5B-Instruct",
        dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
             max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645),
        reasoning=False, template="tokenizer",
        description="Qwen2.5-1.5B(-Instruct) shapes (28 layers, 1536 wide, tied embeddings, ≈1.54B)",
    ),
    "qwen2_5_7b": Preset(
        "Qwen/Qwen2.5-7B-Instruct",
        dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6,
             max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645),
        reasoning=False, template="tokenizer",
        description="Qwen2.5-7B(-Instruct) shapes (28 layers, 3584 wide, ≈7.62B)",
    ),
    "r1_distill_qwen_1_5b": Preset(
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False, rope_theta=1e4, rms_norm_eps=1e-6,
             max_position_embeddings=131072, bos_token_id=151646, eos_token_id=151643),
        reasoning=True, template="r1",
        description="DeepSeek-R1-Distill-Qwen-1.5B (a one-GPU reasoner, 1536 wide like Qwen2.5-1.5B, ≈1.78B)",
    ),
}  # fmt: skip


class PresetMismatchError(ValueError):
    """A local folder whose config.json does not have the preset's shapes (one line, both values)."""


def check_folder(name: str, folder: str | Path) -> dict[str, Any]:
    """Read ``folder/config.json`` and compare its shapes with preset ``name``; returns the folder's config."""
    path = Path(folder, "config.json")
    if not path.is_file():
        raise FileNotFoundError(f"backbone '{name}': {folder} is not a model folder (no config.json there)")
    folder_cfg = json.loads(path.read_text())
    preset = PRESETS[name]
    problems = []
    if folder_cfg.get("model_type", "qwen2") != "qwen2":
        problems.append(f"model_type '{folder_cfg['model_type']}' but the preset is 'qwen2'")
    for key in SHAPE_KEYS:
        ours, theirs = preset.config[key], folder_cfg.get(key, False if key == "tie_word_embeddings" else None)
        if theirs != ours:
            problems.append(f"{key} {theirs} but the preset has {ours}")
    if problems:
        raise PresetMismatchError(
            f"backbone '{name}': {path} has {'; '.join(problems)} ({preset.hf_repo}); pick the matching preset "
            f"or load any shape with backbone=hf model.backbone.path={folder}"
        )
    return folder_cfg


def on_meta_device() -> bool:
    """True inside ``with torch.device("meta")`` (shape-only builds: no memory, no init)."""
    return torch.get_default_device().type == "meta"


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly in ``dtype`` (no float32 copy of a 32B model first)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def no_init() -> Any:
    """transformers' ``no_init_weights``: random init is pointless on the meta device and slow at 32B."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


@contextmanager
def quiet_load_report(cut: bool) -> Iterator[None]:
    """Silence transformers' table of unexpected keys when a depth cut leaves layers in the folder unused."""
    logger = logging.getLogger("transformers.modeling_utils")
    old = logger.level
    if cut:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def has_tokenizer(folder: str | Path) -> bool:
    return any(Path(folder, f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(name: str, tokenizer: str | None, pretrained: str | None) -> Any:
    """The ``tokenizer`` folder, else ``pretrained``'s when it holds one, else (shape-only use) the tiny one."""
    folder = tokenizer or (pretrained if pretrained and has_tokenizer(pretrained) else None)
    if folder is None:
        if pretrained and not on_meta_device():
            raise FileNotFoundError(f"backbone '{name}': {pretrained} holds no tokenizer; add tokenizer=<folder>")
        if not on_meta_device():
            log.warning("backbone '%s': no tokenizer folder given; using the tiny tokenizer (shape-only use)", name)
        return tiny_parts.tokenizer()
    if not has_tokenizer(folder):
        raise FileNotFoundError(f"backbone '{name}': {folder} holds no tokenizer ({', '.join(TOKENIZER_FILES)})")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def pick_template(preset: Preset, tok: Any, chat_template: str | None) -> str:
    if chat_template:
        from r1v.model.parts.backbones import read_template

        return read_template(chat_template)
    own = getattr(tok, "chat_template", None)
    if preset.template == "tokenizer" and isinstance(own, str) and own:
        return own
    return tiny_parts.template("r1" if preset.reasoning else "direct")


def qwen2(name: str, pretrained: str | None = None, tokenizer: str | None = None, dtype: str = "bfloat16",
          num_hidden_layers: int | None = None, attn_implementation: str = "sdpa",
          chat_template: str | None = None) -> LanguageBackbone:  # fmt: skip
    """Build preset ``name``: random weights, or a checked local folder's weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    preset = PRESETS[name]
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"backbone '{name}': dtype '{dtype}' is not a torch dtype (e.g. bfloat16, float32)")
    depth = preset.config["num_hidden_layers"]
    if num_hidden_layers is not None and not 1 <= num_hidden_layers <= depth:
        raise ValueError(f"backbone '{name}': num_hidden_layers {num_hidden_layers} is not in 1..{depth}")
    if pretrained:
        check_folder(name, pretrained)
        config = Qwen2Config.from_pretrained(pretrained, local_files_only=True)
    else:
        config = Qwen2Config(**preset.config)  # rope_theta: transformers 5 files it under rope_parameters
    if num_hidden_layers is not None and num_hidden_layers != depth:  # keep the first N layers
        config.num_hidden_layers = num_hidden_layers
        config.layer_types = list(config.layer_types)[:num_hidden_layers]
    config._attn_implementation = attn_implementation
    tok = load_tokenizer(name, tokenizer, pretrained)
    if pretrained and not on_meta_device():
        with quiet_load_report(cut=config.num_hidden_layers < depth):  # the dropped layers are expected leftovers
            keep = config.num_hidden_layers
            model = hf_from_folder(Qwen2ForCausalLM, pretrained, f"backbone '{name}'", config=config,
                                   dtype=torch_dtype, skip=lambda key: _layer(key) >= keep,
                                   attn_implementation=attn_implementation)  # fmt: skip
        if config.num_hidden_layers < depth:
            log.info("backbone '%s': kept the first %d of %d layers", name, config.num_hidden_layers, depth)
    else:  # meta: shapes only (any folder was checked above); otherwise random init
        with default_dtype(torch_dtype), no_init() if on_meta_device() else nullcontext():
            model = Qwen2ForCausalLM(config)
        if config.tie_word_embeddings:
            model.tie_weights()  # no_init_weights also skips the tying of lm_head to the embeddings
    return LanguageBackbone(model, tok, pick_template(preset, tok, chat_template), reasoning=preset.reasoning)


def _layer(key: str) -> int:
    """The decoder-layer index in a stored tensor's name (-1 outside the layers)."""
    m = re.match(r"model\.layers\.(\d+)\.", key)
    return int(m[1]) if m else -1


def preset_factory(name: str) -> Any:
    """The registered factory of preset ``name`` (its keyword arguments are the config knobs)."""

    def factory(pretrained: str | None = None, tokenizer: str | None = None, dtype: str = "bfloat16",
                num_hidden_layers: int | None = None, attn_implementation: str = "sdpa",
                chat_template: str | None = None) -> LanguageBackbone:  # fmt: skip
        return qwen2(name, pretrained, tokenizer, dtype, num_hidden_layers, attn_implementation, chat_template)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{PRESETS[name].description}; weights from a local folder ({PRESETS[name].hf_repo} layout)."
    return factory

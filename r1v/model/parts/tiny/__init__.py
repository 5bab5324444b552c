"""The embedded tiny parts: architecture presets, tokenizer and chat templates, shipped weights.

Weights and the tokenizer are produced by ``python tools/pretrain_tiny.py`` (deterministic for a
given torch version and thread count); ``MANIFEST.json`` records their SHA-256 and the command
(``internvit.json`` does the same for the tiny InternViT, an optional part outside the default model).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
SPECIAL_TOKENS = {
    "bos_token": "<｜begin▁of▁sentence｜>",
    "eos_token": "<｜end▁of▁sentence｜>",
    "pad_token": "<｜▁pad▁｜>",
}
ROLE_TOKENS = ["<｜User｜>", "<｜Assistant｜>"]
# Architecture presets (timm/torchtune style: numbers live in Python, not in YAML).
VISION = {"image_size": 64, "patch_size": 8, "hidden_size": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0}
LM = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
      "num_key_value_heads": 2, "max_position_embeddings": 512, "rope_theta": 10000.0,
      "tie_word_embeddings": True, "rms_norm_eps": 1e-6}  # fmt: skip
WEIGHTS = {
    "vision": "vision.safetensors",
    "instruct": "lm_instruct.safetensors",
    "reasoner": "lm_reasoner.safetensors",
}
# the omni presets' LMs (model=tiny_omni): the two above with the audio tokens, trained on for the omni tasks; pinned
# by OMNI_MANIFEST, not MANIFEST.json (which pins the default model's parts)
OMNI_WEIGHTS = {"instruct_omni": "lm_instruct_omni.safetensors", "reasoner_omni": "lm_reasoner_omni.safetensors"}
AUDIO_FOLDER = "audio"  # the tiny pre-trained Whisper encoder (audio=whisper_tiny_pretrained): a Whisper folder
OMNI_MANIFEST = "omni.json"  # provenance of the omni parts (tools/pretrain_tiny.py --only audio omni)
# The pre-trained tiny InternViT (vision=internvit_tiny_pretrained; the "internvit_tiny" preset with these
# numbers), the same size as VISION. It has its own provenance file, so MANIFEST.json, which pins the
# default model's parts, stays as it was when this part was added.
INTERNVIT = {"depth": 4, "hidden_size": 64, "mlp_size": 128}
INTERNVIT_WEIGHTS = "internvit.safetensors"
INTERNVIT_MANIFEST = "internvit.json"  # command, torch version, threads and the SHA-256 of INTERNVIT_WEIGHTS


def template(style: str) -> str:
    """Jinja chat template: 'r1' (generation prompt pre-fills ``<think>\\n``) or 'direct'."""
    return (HERE / f"chat_{style}.jinja").read_text()


def tokenizer() -> Any:
    """The tiny byte-level BPE tokenizer (built offline by tools/pretrain_tiny.py)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(HERE / "tokenizer.json"), **SPECIAL_TOKENS)
    tok.padding_side = "right"
    return tok


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest() -> dict[str, Any]:
    return json.loads((HERE / "MANIFEST.json").read_text())


def internvit_manifest() -> dict[str, Any]:
    return json.loads((HERE / INTERNVIT_MANIFEST).read_text())

"""Language backbones: the tiny pretrained pair (instruct substitute + reasoner) and any local HF LM."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from r1v.core.interfaces import AUD_END, AUD_START, AUDIO_CONTEXT, LanguageBackbone
from r1v.model.parts import tiny as tiny_parts
from r1v.runtime.weights import hf_from_folder, load_into, skip_hf_init


def tiny_lm(variant: str, pretrained: str | None = "builtin", attn_implementation: str = "sdpa") -> LanguageBackbone:
    """A tiny Qwen2 LM; 'instruct' answers directly, 'reasoner' writes ``<think>`` chains first."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_parts.tokenizer()
    if variant.endswith("_omni"):  # the audio tokens belong to these LMs' vocabulary (r1v.model.assemble's order)
        tok.add_tokens([AUD_START, AUD_END, AUDIO_CONTEXT], special_tokens=True)
    config = Qwen2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **tiny_parts.LM)  # fmt: skip
    config._attn_implementation = attn_implementation
    with skip_hf_init() if pretrained else nullcontext():  # weights are loaded right below
        model = Qwen2ForCausalLM(config)
    if pretrained:
        files = {**tiny_parts.WEIGHTS, **tiny_parts.OMNI_WEIGHTS}
        path = tiny_parts.HERE / files[variant] if pretrained == "builtin" else Path(pretrained)
        load_into(model, path, f"backbone 'tiny_{variant}'")
    reasoning = variant.startswith("reasoner")
    return LanguageBackbone(model, tok, tiny_parts.template("r1" if reasoning else "direct"), reasoning=reasoning)


def tiny_instruct(pretrained: str | None = "builtin", attn_implementation: str = "sdpa") -> LanguageBackbone:
    """Tiny Qwen2 'instruct' LM (the substitute for alignment): scene text + question → answer."""
    return tiny_lm("instruct", pretrained, attn_implementation)


def tiny_reasoner(pretrained: str | None = "builtin", attn_implementation: str = "sdpa") -> LanguageBackbone:
    """Tiny Qwen2 'reasoner' LM (the R1-distill stand-in): scene text + question → <think> → answer."""
    return tiny_lm("reasoner", pretrained, attn_implementation)


def tiny_instruct_omni(pretrained: str | None = "builtin", attn_implementation: str = "sdpa") -> LanguageBackbone:
    """The tiny instruct LM that also reads ``<aud>`` clip text and video frame lines (model=tiny_omni)."""
    return tiny_lm("instruct_omni", pretrained, attn_implementation)


def tiny_reasoner_omni(pretrained: str | None = "builtin", attn_implementation: str = "sdpa") -> LanguageBackbone:
    """The tiny reasoner that also reads ``<aud>`` clip text and video frame lines (model=tiny_omni_reasoner)."""
    return tiny_lm("reasoner_omni", pretrained, attn_implementation)


def hf(path: str, dtype: str = "bfloat16", reasoning: bool = True, chat_template: str | None = None,
       attn_implementation: str = "sdpa") -> LanguageBackbone:  # fmt: skip
    """Any Hugging Face causal LM from a local folder (config.json + safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(f"backbone 'hf': {path} is not a model folder (no config.json there)")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = hf_from_folder(AutoModelForCausalLM, path, "backbone 'hf'", dtype=getattr(torch, dtype),
                           attn_implementation=attn_implementation)  # fmt: skip
    template = read_template(chat_template) or tok.chat_template
    if not template:
        from r1v.core.errors import ModelConfigError

        raise ModelConfigError(f"backbone 'hf': the tokenizer in {path} has no chat template; "
                               "set model.backbone.chat_template=/path/to/template.jinja")  # fmt: skip
    return LanguageBackbone(model, tok, template, reasoning=reasoning)


def read_template(value: str | None) -> str | None:
    """A Jinja chat template given inline or as a path to a file."""
    if not value or "{{" in value or "{%" in value:
        return value
    if not Path(value).is_file():
        raise FileNotFoundError(f"chat template file {value} does not exist")
    return Path(value).read_text()

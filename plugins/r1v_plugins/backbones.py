"""Language backbones: the tiny pretrained pair and any local HF causal LM (r1v.model.parts.backbones)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.model.parts.backbones import hf, tiny_instruct, tiny_reasoner


@hookimpl
def register_backbones(register):
    register("tiny_instruct", tiny_instruct)
    register("tiny_reasoner", tiny_reasoner)
    register("hf", hf, "any local Hugging Face causal LM folder (e.g. DeepSeek-R1-Distill-Qwen-32B)")

"""Language backbones: the tiny pretrained pair and any local HF causal LM (r1v.model.parts.backbones)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.model.parts.backbones import hf, tiny_instruct, tiny_instruct_omni, tiny_reasoner, tiny_reasoner_omni


@hookimpl
def register_backbones(register):
    register("tiny_instruct", tiny_instruct)
    register("tiny_reasoner", tiny_reasoner)
    register("tiny_instruct_omni", tiny_instruct_omni)
    register("tiny_reasoner_omni", tiny_reasoner_omni)
    register("hf", hf, "any local Hugging Face causal LM folder (e.g. DeepSeek-R1-Distill-Qwen-32B)")

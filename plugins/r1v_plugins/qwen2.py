"""Qwen2-family backbone presets (shapes and loading: r1v.model.parts.qwen2)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.model.parts.qwen2 import PRESETS, preset_factory


@hookimpl
def register_backbones(register):
    for name, preset in PRESETS.items():
        register(name, preset_factory(name), preset.description, hf_repo=preset.hf_repo)

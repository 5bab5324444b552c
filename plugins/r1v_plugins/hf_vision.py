"""SigLIP and CLIP vision towers through transformers (model code: r1v.model.parts.hf_vision)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.model.parts.hf_vision import clip, clip_tiny, siglip, siglip_tiny


@hookimpl
def register_vision_encoders(register):
    register("siglip", siglip)
    register("clip", clip)
    register("siglip_tiny", siglip_tiny)
    register("clip_tiny", clip_tiny)

"""Vision encoders: the tiny pretrained ViT and any timm ViT (model code: r1v.model.parts.timm_vit)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.model.parts.timm_vit import timm_vit, tiny


@hookimpl
def register_vision_encoders(register):
    register("tiny", tiny, "tiny ViT (64 px, 8×8 patches, 64 wide) pre-trained on the synthetic scenes")
    register("timm", timm_vit, "any timm Vision Transformer by name, weights from a local file")

"""InternViT encoders, R1V's vision tower (model code: r1v.model.parts.internvit)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.model.parts.internvit import internvit_6b, internvit_300m, internvit_tiny, internvit_tiny_pretrained


@hookimpl
def register_vision_encoders(register):
    register("internvit_6b", internvit_6b, "InternViT-6B-448px-V2_5 (R1V's encoder: 45 layers, 3200 wide, ≈5.5B)")
    register("internvit_300m", internvit_300m, "InternViT-300M-448px-V2_5 (24 layers, 1024 wide, ≈0.3B)")
    register("internvit_tiny", internvit_tiny, "tiny random InternViT (64 px, 8×8 patches, 2 layers) for tests")
    register(
        "internvit_tiny_pretrained",
        internvit_tiny_pretrained,
        "tiny InternViT (64 px, 8×8 patches, 4 layers) pre-trained on the synthetic scenes; exports as InternVL",
    )

"""Vision encoders: timm ViTs (any timm model name, local weights only) and the tiny pretrained one."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from r1v.model.parts import tiny as tiny_parts
from r1v.runtime.weights import load_into


class TimmViT(nn.Module):
    """A timm Vision Transformer returning its patch grid (prefix/CLS tokens dropped).

    ``select_layer`` follows InternVL: -1 is the last block (after the final norm), -k the k-th
    from the end (raw block output).
    """

    def __init__(self, vit: nn.Module, select_layer: int = -1) -> None:
        super().__init__()
        self.vit = vit
        self.select_layer = select_layer
        self.image_size = int(vit.patch_embed.img_size[0])
        self.grid_size = int(vit.patch_embed.grid_size[0])
        self.hidden_size = int(vit.embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (N,3,S,S) -> (N,g,g,C)
        if self.select_layer == -1:
            tokens = self.vit.forward_features(pixel_values)  # (N, prefix + g*g, C)
            tokens = tokens[:, self.vit.num_prefix_tokens :]
            return tokens.reshape(tokens.shape[0], self.grid_size, self.grid_size, -1)
        index = len(self.vit.blocks) + self.select_layer
        (fmap,) = self.vit.forward_intermediates(
            pixel_values, indices=[index], norm=False, output_fmt="NCHW", intermediates_only=True
        )
        return fmap.permute(0, 2, 3, 1)  # (N,C,g,g) -> (N,g,g,C)


def tiny(
    pretrained: str | None = "builtin",
    image_size: int = tiny_parts.VISION["image_size"],
    patch_size: int = tiny_parts.VISION["patch_size"],
    hidden_size: int = tiny_parts.VISION["hidden_size"],
    depth: int = tiny_parts.VISION["depth"],
    num_heads: int = tiny_parts.VISION["num_heads"],
    select_layer: int = -1,
) -> TimmViT:
    """Tiny ViT (64 px tiles, 8×8 patches) pre-trained on the synthetic scenes."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=image_size, patch_size=patch_size, embed_dim=hidden_size, depth=depth,
        num_heads=num_heads, mlp_ratio=tiny_parts.VISION["mlp_ratio"], num_classes=0, global_pool="",
    )  # fmt: skip
    enc = TimmViT(vit, select_layer)
    if pretrained:
        path = tiny_parts.HERE / tiny_parts.WEIGHTS["vision"] if pretrained == "builtin" else Path(pretrained)
        load_into(enc, path, "vision 'tiny'")
    return enc


def timm_vit(model_name: str, pretrained: str | None = None, image_size: int | None = None,
             select_layer: int = -1) -> TimmViT:  # fmt: skip
    """Any timm ViT by name; weights only from a local file (``pretrained=/path/model.safetensors``)."""
    import timm

    kwargs = {"num_classes": 0, "global_pool": ""}
    if image_size:
        kwargs["img_size"] = image_size
    if pretrained:
        if not Path(pretrained).exists():
            raise FileNotFoundError(f"vision 'timm': pretrained weights {pretrained} do not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained)}
    vit = timm.create_model(model_name, pretrained=bool(pretrained), **kwargs)
    return TimmViT(vit, select_layer)

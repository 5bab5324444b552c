"""InternViT (InternVL's ``InternVisionModel``) as an r1v vision encoder.

Computes, for tiles (N,3,S,S): patch embedding (Conv2d, kernel = stride = patch) with a CLS token and
learned position embeddings, then ``depth`` pre-norm blocks
``x = x + attn(norm1(x)) * ls1; x = x + mlp(norm2(x)) * ls2`` (no final norm), and returns hidden state
``select_layer`` with the CLS token dropped, as a grid (N, g, g, C).

It follows OpenGVLab InternVL ``modeling_intern_vit.py``: ``InternVisionEmbeddings`` (bicubic
interpolation of the patch position embeddings when the input grid differs, ``_get_pos_embed``),
``InternRMSNorm`` (computed in float32), ``InternAttention._naive_attn`` (RMSNorm of q and k over all C
dims before the split into heads; here through ``scaled_dot_product_attention``), ``InternMLP`` (GELU),
``InternVisionEncoderLayer`` (layer scale ``ls1``/``ls2``), and ``InternVLChatModel.extract_feature``
(``hidden_states[select_layer]``, the list holding the embeddings then every layer's output). Module
names equal the published keys: a checkpoint's ``vision_model.<key>`` is ``<key>`` here, and a file
whose keys carry the ``vision_model.`` prefix (a full InternVL/R1V file) loads too, its other keys ignored.
``from_config`` builds one from the ``vision_config`` of an InternVL-chat ``config.json`` (see
:mod:`r1v.model.internvl`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from r1v.model.parts import tiny as tiny_parts
from r1v.runtime.weights import load_into

# Architecture presets (numbers live in Python, not YAML).
PRESETS = {
    "internvit_6b": dict(image_size=448, patch_size=14, hidden_size=3200, depth=45, num_heads=25, mlp_size=12800,
                         qkv_bias=False, qk_normalization=True, norm="rms_norm"),  # InternViT-6B-448px-V2_5
    "internvit_300m": dict(image_size=448, patch_size=14, hidden_size=1024, depth=24, num_heads=16, mlp_size=4096,
                           qkv_bias=True, qk_normalization=False, norm="layer_norm"),  # InternViT-300M-448px-V2_5
    "internvit_tiny": dict(image_size=64, patch_size=8, hidden_size=64, depth=2, num_heads=4, mlp_size=128,
                           qkv_bias=False, qk_normalization=True, norm="rms_norm"),  # for tests
}  # fmt: skip
EPS = 1e-6
LAYER_SCALE_INIT = 0.1  # InternVisionConfig.initializer_factor
PREFIX = "vision_model."  # the encoder's key prefix in InternVL / R1V checkpoints


class RMSNorm(nn.Module):
    """InternRMSNorm: normalise in float32, cast back, then scale by ``weight``."""

    def __init__(self, dim: int, eps: float = EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "rms_norm":
        return RMSNorm(dim, EPS)
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=EPS)
    raise ValueError(f"InternViT: unknown norm '{kind}' (use rms_norm or layer_norm)")


class Embeddings(nn.Module):
    def __init__(self, image_size: int, patch_size: int, hidden_size: int) -> None:
        super().__init__()
        self.grid = image_size // patch_size  # side of the position table (the checkpoint's native grid)
        self.class_embedding = nn.Parameter(torch.randn(1, 1, hidden_size))
        self.patch_embedding = nn.Conv2d(3, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.position_embedding = nn.Parameter(torch.randn(1, 1 + self.grid * self.grid, hidden_size))

    def patch_positions(self, h: int, w: int) -> torch.Tensor:
        """(1, h*w, C) patch position embeddings, bicubically resized when (h, w) is not the native grid."""
        pos = self.position_embedding[:, 1:]  # (1, G*G, C)
        if (h, w) == (self.grid, self.grid):
            return pos  # InternVL interpolates to the same size here, which is the identity
        pos = pos.float().reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)  # (1, C, G, G)
        pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)  # (1, C, h, w)
        return pos.flatten(2).transpose(1, 2).to(self.position_embedding.dtype)  # (1, h*w, C)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (N,3,S,S) -> (N, 1+h*w, C)
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype))  # (N, C, h, w)
        n, _, h, w = patches.shape
        patches = patches.flatten(2).transpose(1, 2)  # (N, h*w, C)
        cls = self.class_embedding.expand(n, 1, -1).to(dtype)  # (N, 1, C)
        pos = torch.cat([self.position_embedding[:, :1], self.patch_positions(h, w)], dim=1)  # (1, 1+h*w, C)
        return torch.cat([cls, patches], dim=1) + pos.to(dtype)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool, qk_normalization: bool) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"InternViT: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qk_normalization = qk_normalization
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        if qk_normalization:
            self.q_norm = RMSNorm(hidden_size, EPS)
            self.k_norm = RMSNorm(hidden_size, EPS)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, L, C)
        n, length, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 × (N, L, C): the 3C outputs are laid out (3, H, D)
        if self.qk_normalization:
            q, k = self.q_norm(q), self.k_norm(k)  # over all C dims, before the split into heads
        q, k, v = (t.reshape(n, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # (N, H, L, D)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, L, D), scale 1/sqrt(D)
        return self.proj(out.transpose(1, 2).reshape(n, length, c))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, mlp_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, L, mlp) -> (N, L, C)
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_size: int, qkv_bias: bool, qk_normalization: bool,
                 norm: str) -> None:  # fmt: skip
        super().__init__()
        self.attn = Attention(hidden_size, num_heads, qkv_bias, qk_normalization)
        self.mlp = MLP(hidden_size, mlp_size)
        self.norm1 = make_norm(norm, hidden_size)
        self.norm2 = make_norm(norm, hidden_size)
        self.ls1 = nn.Parameter(LAYER_SCALE_INIT * torch.ones(hidden_size))
        self.ls2 = nn.Parameter(LAYER_SCALE_INIT * torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, L, C)
        x = x + self.attn(self.norm1(x).to(x.dtype)) * self.ls1
        return x + self.mlp(self.norm2(x).to(x.dtype)) * self.ls2


class Encoder(nn.Module):
    def __init__(self, depth: int, **layer: object) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(**layer) for _ in range(depth))


class InternViT(nn.Module):
    """InternVisionModel returning the patch grid of hidden state ``select_layer`` (CLS dropped).

    ``image_size``/``patch_size`` fix the parameters (the position table of the checkpoint);
    ``tile_size`` (default ``image_size``) is the tile side the model is fed, its position
    embeddings interpolated on the fly, so the published weights load unchanged at any tile size.
    """

    def __init__(self, image_size: int, patch_size: int, hidden_size: int, depth: int, num_heads: int,
                 mlp_size: int, qkv_bias: bool, qk_normalization: bool, norm: str, select_layer: int = -1,
                 tile_size: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if not -(depth + 1) <= select_layer <= depth:
            raise ValueError(
                f"InternViT: select_layer {select_layer} is out of range for {depth} layers "
                f"(hidden states are the embeddings and {depth} layer outputs; -1 is the last)"
            )
        tile_size = int(tile_size or image_size)
        if tile_size % patch_size:
            raise ValueError(f"InternViT: image_size {tile_size} is not a multiple of the patch size {patch_size}")
        self.patch_size = patch_size
        self.image_size, self.grid_size, self.hidden_size = tile_size, tile_size // patch_size, hidden_size
        self.select_layer = select_layer
        self.n_run = select_layer % (depth + 1)  # layers to run: hidden_states[n_run] is the output
        self.embeddings = Embeddings(image_size, patch_size, hidden_size)
        self.encoder = Encoder(depth, hidden_size=hidden_size, num_heads=num_heads, mlp_size=mlp_size,
                               qkv_bias=qkv_bias, qk_normalization=qk_normalization, norm=norm)  # fmt: skip
        self.register_load_state_dict_pre_hook(_strip_vision_model_prefix)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (N,3,S,S) -> (N, S/p, S/p, C)
        h, w = pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size
        x = self.embeddings(pixel_values)  # (N, 1+h*w, C) = hidden_states[0]
        for layer in self.encoder.layers[: self.n_run]:
            x = layer(x)  # (N, 1+h*w, C)
        return x[:, 1:].reshape(x.shape[0], h, w, -1)  # CLS dropped -> (N, h, w, C)


def _strip_vision_model_prefix(module, state_dict, prefix, *_args) -> None:
    """A file keyed ``vision_model.<key>`` (InternVL/R1V layout) loads as ``<key>``; its other keys are dropped."""
    ours = prefix + PREFIX
    if not any(k.startswith(ours) for k in state_dict):
        return
    for key in [k for k in state_dict if k.startswith(prefix)]:
        value = state_dict.pop(key)
        if key.startswith(ours):
            state_dict[prefix + key[len(ours) :]] = value


def build(preset: str, pretrained: str | Path | None, select_layer: int, image_size: int | None, *,
          name: str | None = None, **overrides) -> InternViT:  # fmt: skip
    """InternViT ``preset`` with ``overrides``; ``name`` (default ``preset``) is the vision option errors name."""
    name = name or preset
    spec = {**PRESETS[preset], **overrides}
    if image_size is not None:
        grid = int(image_size) // spec["patch_size"]
        if grid % 2:
            raise ValueError(f"vision '{name}': image_size {image_size} gives an odd grid of {grid} patches; "
                             f"the adapter's 0.5 pixel shuffle needs an even grid")  # fmt: skip
    enc = InternViT(**spec, select_layer=select_layer, tile_size=image_size)
    if pretrained:
        load_into(enc, pretrained, f"vision '{name}'")
    return enc


# InternVisionConfig's defaults (OpenGVLab configuration_intern_vit.py), for fields a config.json leaves out.
CONFIG_DEFAULTS: dict[str, Any] = dict(num_channels=3, patch_size=14, image_size=224, qkv_bias=False, hidden_size=3200,
                                       num_attention_heads=25, intermediate_size=12800, qk_normalization=True,
                                       num_hidden_layers=48, hidden_act="gelu", norm_type="rms_norm",
                                       layer_norm_eps=1e-6)  # fmt: skip


def from_config(config: Mapping[str, Any], select_layer: int = -1, image_size: int | None = None) -> InternViT:
    """An InternViT with explicit dimensions: the ``vision_config`` of an InternVL-chat ``config.json``
    (InternVisionConfig fields; absent ones take that class's defaults), random weights.

    ``layer_norm_eps`` applies to every norm (norm1/norm2 and q_norm/k_norm), as in InternVL;
    ``image_size`` is the tile side fed to the model (InternVL's ``force_image_size``), default the config's.
    """
    c = {**CONFIG_DEFAULTS, **config}
    if c["hidden_act"] != "gelu" or int(c["num_channels"]) != 3:
        raise ValueError(f"InternViT: hidden_act '{c['hidden_act']}' / num_channels {c['num_channels']} are not "
                         f"supported (gelu, 3 channels)")  # fmt: skip
    enc = InternViT(image_size=int(c["image_size"]), patch_size=int(c["patch_size"]), hidden_size=int(c["hidden_size"]),
                    depth=int(c["num_hidden_layers"]), num_heads=int(c["num_attention_heads"]),
                    mlp_size=int(c["intermediate_size"]), qkv_bias=bool(c["qkv_bias"]),
                    qk_normalization=bool(c["qk_normalization"]), norm=str(c["norm_type"]),
                    select_layer=select_layer, tile_size=image_size)  # fmt: skip
    for module in enc.modules():
        if isinstance(module, RMSNorm | nn.LayerNorm):
            module.eps = float(c["layer_norm_eps"])
    return enc


def _depth(num_hidden_layers: int | None) -> dict[str, int]:
    return {} if num_hidden_layers is None else {"depth": int(num_hidden_layers)}


def internvit_6b(pretrained: str | None = None, select_layer: int = -1, image_size: int | None = None,
                 num_hidden_layers: int | None = None) -> InternViT:  # fmt: skip
    """InternViT-6B-448px-V2_5 (Skywork R1V's encoder); weights from a local .safetensors file.
    ``num_hidden_layers`` keeps only the first N blocks (shape experiments that must fit small machines)."""
    return build("internvit_6b", pretrained, select_layer, image_size, **_depth(num_hidden_layers))


def internvit_300m(pretrained: str | None = None, select_layer: int = -1, image_size: int | None = None,
                   num_hidden_layers: int | None = None) -> InternViT:  # fmt: skip
    """InternViT-300M-448px-V2_5; weights from a local .safetensors file (``num_hidden_layers``: first N blocks)."""
    return build("internvit_300m", pretrained, select_layer, image_size, **_depth(num_hidden_layers))


def internvit_tiny(pretrained: str | None = None, select_layer: int = -1, image_size: int | None = None,
                   depth: int = 2, hidden_size: int = 64) -> InternViT:  # fmt: skip
    """A tiny random InternViT (64 px, 8×8 patches, RMSNorm + qk norm) for tests."""
    return build("internvit_tiny", pretrained, select_layer, image_size, depth=depth, hidden_size=hidden_size,
                 mlp_size=2 * hidden_size)  # fmt: skip


def internvit_tiny_pretrained(pretrained: str | None = "builtin", select_layer: int = -1,
                              image_size: int | None = None) -> InternViT:  # fmt: skip
    """A tiny InternViT (64 px, 8×8 patches, 4 layers, 64 wide) pre-trained on the synthetic scenes as
    ``vision=tiny`` is (``tools/pretrain_tiny.py --only internvit``): the tiny encoder that exports as
    InternVL-chat. ``pretrained``: ``builtin`` (the shipped file), a local .safetensors path, or null (random)."""
    path = tiny_parts.HERE / tiny_parts.INTERNVIT_WEIGHTS if pretrained == "builtin" else pretrained
    return build(
        "internvit_tiny", path, select_layer, image_size, name="internvit_tiny_pretrained", **tiny_parts.INTERNVIT
    )

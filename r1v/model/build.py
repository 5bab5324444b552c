"""Build a VisionLanguageModel and its Processor from the ``model`` config node, and freeze parts."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from r1v.data.images import IMAGENET_MEAN, IMAGENET_STD
from r1v.data.processor import Processor
from r1v.interfaces import IMG_CONTEXT, IMG_END, IMG_START, THINK_CLOSE, THINK_OPEN, LanguageBackbone
from r1v.model.vlm import VisionLanguageModel
from r1v.registry import Registry, RegistryError, did_you_mean
from r1v.weights import fp32_rotary, gathered

PARTS = ("vision", "adapter", "backbone")
RESERVED = ("name",)  # keys of a plugin config node that are not factory knobs
ADAPTER_FIXED = ("vision_hidden", "llm_hidden")  # passed by the builder, not the user


class ModelConfigError(ValueError):
    """The parts do not fit together (one line, naming both sides)."""


def knobs(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in RESERVED}


def ensure_special_tokens(backbone: LanguageBackbone) -> None:
    """Add image/think tokens the tokenizer lacks and grow the embeddings (R1V re-assembly step).

    New rows start at the mean embedding so that ``<img>``/``</img>`` are sensible inputs.
    """
    tok = backbone.tokenizer
    missing = [t for t in (IMG_START, IMG_END, IMG_CONTEXT, THINK_OPEN, THINK_CLOSE) if t not in tok.get_vocab()]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not missing:
        return
    tok.add_tokens(missing, special_tokens=True)  # never split; the tokenizer's special-token map is kept
    emb = backbone.model.get_input_embeddings()
    old = emb.weight.shape[0]
    if len(tok) > old:
        backbone.model.resize_token_embeddings(len(tok), mean_resizing=False)
        with gathered(backbone.model, modifier_rank=0), torch.no_grad():  # new rows: the mean row, deterministic
            for layer in {backbone.model.get_input_embeddings(), backbone.model.get_output_embeddings()} - {None}:
                if not layer.weight.is_meta:
                    layer.weight[old:] = layer.weight[:old].mean(0)


def build(model_cfg: Mapping[str, Any], registry: Registry) -> tuple[VisionLanguageModel, Processor]:
    """Compose encoder → adapter → backbone by registry name; checks that the widths fit.

    With ``model.internvl=<folder>`` the whole model comes from an InternVL-chat / Skywork-R1V checkpoint
    folder instead (:func:`r1v.model.internvl.build_from_folder`); the part nodes are then ignored.
    """
    if model_cfg.get("internvl"):
        from r1v.model.internvl import build_from_model_node

        return build_from_model_node(model_cfg, registry)
    vcfg, acfg, bcfg = (model_cfg[p] for p in PARTS)
    vision = registry.build("vision", vcfg["name"], **knobs(vcfg))
    backbone: LanguageBackbone = registry.build("backbone", bcfg["name"], **knobs(bcfg))
    entry = registry.get("adapter", acfg["name"])
    entry.check_knobs(knobs(acfg), where="adapter", fixed=ADAPTER_FIXED)
    adapter = entry.factory(vision_hidden=vision.hidden_size, llm_hidden=backbone.hidden_size, **knobs(acfg))
    if adapter.in_features != vision.hidden_size:
        raise ModelConfigError(
            f"adapter '{acfg['name']}' expects vision features of width {adapter.in_features} but vision "
            f"'{vcfg['name']}' produces width {vision.hidden_size}; drop adapter.in_features or pick a matching encoder"
        )
    if adapter.out_features != backbone.hidden_size:
        raise ModelConfigError(
            f"adapter '{acfg['name']}' produces width {adapter.out_features} but backbone '{bcfg['name']}' "
            f"has hidden size {backbone.hidden_size}"
        )
    return assemble(vision, adapter, backbone, int(model_cfg.get("max_tiles", 1)),
                    bool(model_cfg.get("use_thumbnail", True)))  # fmt: skip


def assemble(vision: nn.Module, adapter: nn.Module, backbone: LanguageBackbone, max_tiles: int = 1,
             use_thumbnail: bool = True) -> tuple[VisionLanguageModel, Processor]:  # fmt: skip
    """The parts → the model and its Processor (special tokens added first); shared by every build path."""
    ensure_special_tokens(backbone)
    img_context_id = backbone.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    vlm = VisionLanguageModel(vision, adapter, backbone.model, img_context_id)
    fp32_rotary(vlm)  # zero.Init builds rotary frequencies in bf16
    processor = Processor(
        tokenizer=backbone.tokenizer, chat_template=backbone.chat_template, image_size=vision.image_size,
        tokens_per_tile=vlm.tokens_per_tile, max_tiles=max_tiles, use_thumbnail=use_thumbnail,
        reasoning=backbone.reasoning,
        image_mean=tuple(getattr(vision, "image_mean", IMAGENET_MEAN)),  # the encoder's own statistics
        image_std=tuple(getattr(vision, "image_std", IMAGENET_STD)),
    )  # fmt: skip
    return vlm, processor


def apply_freeze(model: nn.Module, trainable: list[str]) -> list[str]:
    """Freeze everything, then unfreeze what ``trainable`` names: part names ('adapter', 'vision',
    'backbone'), 'all', or parameter-name globs ('backbone.model.layers.*.mlp.*'). Returns the
    trainable parameter names; a pattern that matches nothing is an error."""
    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for pattern in trainable:
        if pattern == "all":
            hits = names
        elif pattern in PARTS:
            hits = [n for n in names if n.startswith(pattern + ".")]
        else:
            hits = [n for n in names if fnmatch.fnmatch(n, pattern)]
        if not hits:
            raise RegistryError(
                f"stage.trainable: '{pattern}' matches no parameter (use one of {', '.join(('all', *PARTS))} "
                f"or a glob over parameter names){did_you_mean(pattern, ['all', *PARTS])}"
            )
        chosen.update(hits)
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    return sorted(chosen)

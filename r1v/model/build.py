"""Build a VisionLanguageModel and its Processor from the ``model`` config node, and freeze parts."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from r1v.core.errors import ModelConfigError  # noqa: F401  (stages import it from here too)
from r1v.core.interfaces import LanguageBackbone
from r1v.core.registry import Registry, RegistryError, did_you_mean
from r1v.data.processor import Processor
from r1v.model.assemble import AUDIO_PARTS, PARTS, assemble, ensure_special_tokens  # noqa: F401  (importable here too)
from r1v.model.audio_io import AUDIO_ADAPTER_FIXED, build_audio  # noqa: F401  (importable here too)
from r1v.model.contract import check_adapter, check_vision
from r1v.model.vlm import VisionLanguageModel

RESERVED = ("name",)  # keys of a plugin config node that are not factory knobs
ADAPTER_FIXED = ("vision_hidden", "llm_hidden")  # passed by the builder, not the user


def knobs(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in RESERVED}


def build(model_cfg: Mapping[str, Any], registry: Registry) -> tuple[VisionLanguageModel, Processor]:
    """Compose encoder → adapter → backbone by registry name; checks each part's contract as it is built (widths,
    feature shapes, tokens per tile: :mod:`r1v.model.contract`).

    With ``model.internvl=<folder>`` the whole model comes from an InternVL-chat / Skywork-R1V checkpoint
    folder instead (:func:`r1v.model.internvl.build_from_folder`); the part nodes are then ignored.
    """
    if model_cfg.get("internvl"):
        from r1v.model.internvl import build_from_model_node

        return build_from_model_node(model_cfg, registry)
    vcfg, acfg, bcfg = (model_cfg[p] for p in PARTS)
    vision = registry.build("vision", vcfg["name"], **knobs(vcfg))
    check_vision(vision, vcfg["name"])  # each part's contract as it is built (r1v.model.contract)
    backbone: LanguageBackbone = registry.build("backbone", bcfg["name"], **knobs(bcfg))
    entry = registry.get("adapter", acfg["name"])
    entry.check_knobs(knobs(acfg), where="adapter", fixed=ADAPTER_FIXED)
    adapter = entry.factory(vision_hidden=vision.hidden_size, llm_hidden=backbone.hidden_size, **knobs(acfg))
    check_adapter(adapter, acfg["name"], vision, vcfg["name"], backbone.hidden_size, bcfg["name"])
    audio = build_audio(model_cfg, registry, backbone)
    model, processor = assemble(vision, adapter, backbone, int(model_cfg.get("max_tiles", 1)),
                                bool(model_cfg.get("use_thumbnail", True)), audio)  # fmt: skip
    if model.audio is not None:  # the nodes an InternVL export writes beside the folder (r1v.model.audio_io)
        model.audio_config = {p: dict(model_cfg[p]) for p in AUDIO_PARTS}
    return model, processor


def apply_freeze(model: nn.Module, trainable: list[str]) -> list[str]:
    """Freeze everything, then unfreeze what ``trainable`` names: part names ('adapter', 'vision',
    'backbone'), 'all', or parameter-name globs ('backbone.model.layers.*.mlp.*'). Returns the
    trainable parameter names; a pattern that matches nothing is an error."""
    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for pattern in trainable:
        if pattern == "all":
            hits = names
        elif pattern in (*PARTS, *AUDIO_PARTS):
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


def cast_frozen_parts(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Cast every part none of whose parameters train to ``dtype``; returns the parts cast.

    Under Lightning's bf16-mixed without DeepSpeed, a part built in float32 (InternViT, the MLP adapter) would
    stay float32 although autocast runs its matmuls in bf16: twice the memory, a cast of every weight at every
    forward, and the rollout engine (which runs without autocast, in the weights' own dtype) encoding images in
    float32. DeepSpeed's bf16 casts the whole model; here only what no optimizer touches, so trained weights keep
    float32 masters."""
    cast = []
    for part in (*PARTS, *AUDIO_PARTS):
        module = getattr(model, part, None)
        if module is None:  # audio parts exist only when composed
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params) and any(p.dtype != dtype for p in params):
            module.to(dtype)
            cast.append(part)
    return cast

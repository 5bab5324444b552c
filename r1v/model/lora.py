"""LoRA (Hu et al., 2021) on the backbone and/or the vision encoder, through PEFT: ``stage.lora={r: 64, alpha: 128,
dropout: 0.05, targets: [backbone]}``.

A targeted ``nn.Linear`` computing ``y = x·Wᵀ`` becomes ``y = x·Wᵀ + (α/r)·dropout(x)·Aᵀ·Bᵀ`` with ``A`` (r × in)
Kaiming-initialised and ``B`` (out × r) zero, so the model is unchanged at initialisation; only ``A`` and ``B`` (plus
whatever ``stage.trainable`` names, e.g. the MLP projector r1v calls the *adapter*) train. PEFT's layers are injected
in place (``peft.inject_adapter_in_model``): the :class:`~r1v.model.vlm.VisionLanguageModel` keeps its structure and
its parameter names, except that a wrapped layer's own weight moves to ``<module>.base_layer.weight`` and the LoRA
weights are ``<module>.lora_A.default.weight`` / ``lora_B``. Checkpoints hold trainable weights only, so a LoRA
run's checkpoint is the LoRA weights (+ the adapter) and a few MB.

Targets: ``backbone`` = the attention and MLP projections of the language backbone (q/k/v/o, gate/up/down),
``vision`` = every linear layer of the vision encoder, anything else a glob over module names (``*.q_proj``,
``backbone.model.layers.1?.mlp.*``). This module is the only one that imports peft.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r1v.core.errors import ConfigError
from r1v.core.registry import did_you_mean
from r1v.core.values import check_lora
from r1v.runtime.weights import gathered

ADAPTER = "default"  # PEFT's adapter name: one LoRA per model
BACKBONE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRESETS = ("backbone", "vision")
METADATA_KEY = "r1v.lora"  # a trainable-weights safetensors file's metadata: the spec its LoRA weights need


@dataclass(frozen=True)
class LoraSpec:
    """What ``stage.lora`` asks for (checked, with defaults filled in)."""

    r: int = 64
    alpha: float = 128.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("backbone",)

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @classmethod
    def from_node(cls, node: Mapping[str, Any] | None) -> LoraSpec | None:
        """``stage.lora`` (None: no LoRA) -> the spec; a bad key or value is one line naming it
        (:func:`r1v.core.values.check_lora`, also run when the config is validated)."""
        checked = check_lora(node)
        if checked is None:
            return None
        return cls(checked["r"], checked["alpha"], checked["dropout"], tuple(checked["targets"]))

    def to_node(self) -> dict[str, Any]:
        return {**asdict(self), "targets": list(self.targets)}

    def to_json(self) -> str:
        return json.dumps(self.to_node(), sort_keys=True)


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> module, for every linear layer LoRA can wrap (plain ``nn.Linear``: the LM head and
    embeddings are left out on purpose, they are tied or vocabulary-sized)."""
    return {n: m for n, m in model.named_modules() if type(m) is nn.Linear and not n.endswith("lm_head")}


def target_modules(model: nn.Module, spec: LoraSpec) -> list[str]:
    """The full module names ``spec.targets`` select; a target matching none is one line with what exists."""
    linears = _linears(model)
    chosen: set[str] = set()
    for target in spec.targets:
        if target == "backbone":
            hits = [n for n in linears if n.startswith("backbone.") and n.rsplit(".", 1)[-1] in BACKBONE_PROJECTIONS]
        elif target == "vision":
            hits = [n for n in linears if n.startswith("vision.")]
        else:  # a glob over full names, or over the last part(s) of the name (`q_proj`, `mlp.fc1`)
            hits = [n for n in linears if fnmatch.fnmatch(n, target) or fnmatch.fnmatch(n, f"*.{target}")]
        if not hits:
            short = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ConfigError(f"stage.lora.targets: '{target}' matches no linear layer (use {', '.join(PRESETS)}, or "
                              f"a glob over module names; linear layers here: {', '.join(short)})"
                              f"{did_you_mean(target, [*PRESETS, *short])}")  # fmt: skip
        chosen.update(hits)
    too_narrow = [(n, m) for n, m in ((n, linears[n]) for n in sorted(chosen))
                  if spec.r > min(m.in_features, m.out_features)]  # fmt: skip
    if too_narrow:
        n, m = too_narrow[0]
        width = min(m.in_features, m.out_features)
        raise ConfigError(f"stage.lora.r={spec.r}: larger than the width of {n} ({m.in_features} → "
                          f"{m.out_features}); a rank above {width} adds parameters and no expressiveness "
                          f"(use r ≤ {width}, or targets without that layer)")  # fmt: skip
    return sorted(chosen)


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> PEFT LoRA layer (duck-typed: callers need not import peft)."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


def lora_names(model: nn.Module) -> list[str]:
    """The LoRA parameters' names (what a LoRA run trains besides ``stage.trainable``)."""
    return [n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def base_name(name: str) -> str:
    """A parameter name as the model without LoRA has it (``q_proj.base_layer.weight`` -> ``q_proj.weight``)."""
    return name.replace(".base_layer.", ".")


def apply_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Wrap the targeted linear layers in place with LoRA layers (B = 0: the output is unchanged); returns the LoRA
    parameter names. Under ZeRO-3 (inside ``configure_model``, where ``zero.Init`` partitions new parameters as
    they are made) PEFT's initialisation would write into empty placeholders, so A and B are initialised again
    with the parameters gathered (the trap that gave ZeRO-3 a loss of 757 on the H200s: design.md)."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = target_modules(model, spec)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                        bias="none")  # fmt: skip
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}  # PEFT freezes all else: put it back
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for n, p in model.named_parameters():
        if ".lora_" not in n:
            p.requires_grad_(trainable.get(n, trainable.get(base_name(n), False)))
    layers = lora_layers(model)
    params = [p for m in layers.values() for p in (m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight)]
    if any(hasattr(p, "ds_id") for p in params):
        with gathered(params, modifier_rank=0), torch.no_grad():
            for m in layers.values():
                m.reset_lora_parameters(ADAPTER, True)
    return lora_names(model)


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """Within this block the model computes as its base (every LoRA layer passes ``base_layer`` through): the
    reference policy of a LoRA run, with no copy of anything. Sets PEFT's flag directly: its
    ``enable_adapters(False)`` also flips ``requires_grad`` of the LoRA weights, which the optimiser holds."""
    layers = list(lora_layers(model).values())
    before = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, b in zip(layers, before, strict=True):
            m._disable_adapters = b


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA layer into its base weight and put the plain ``nn.Linear`` back (the model then has the
    names and structure of one without LoRA: export, inference). Returns the number of layers merged."""
    layers = lora_layers(model)
    for name, layer in layers.items():
        params = [layer.base_layer.weight, layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
        with gathered(params, modifier_rank=0), torch.no_grad():
            if not layer.disable_adapters:
                layer.merge()
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer.get_base_layer())
    return len(layers)


def unload_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """Take the LoRA layers out without merging (the base as it was) and return their weights by parameter name."""
    names = set(lora_names(model))
    state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if n in names}
    for name, layer in lora_layers(model).items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer.get_base_layer())
    return state


def write_apart(state: Mapping[str, torch.Tensor], spec: LoraSpec, out_dir: Path, rename: Any) -> Path:
    """LoRA weights (r1v names, from :func:`unload_lora`) as a PEFT adapter folder ``out_dir``: ``adapter_config.json``
    + ``adapter_model.safetensors`` with PEFT's key names (``base_model.model.<module>.lora_A.weight``) over the
    exported model's module names (``rename``: r1v name -> exported name), so ``PeftModel.from_pretrained(model,
    out_dir)`` applies them to the exported base."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"base_model.model." + rename(n).replace(f".{ADAPTER}.", "."): t.contiguous() for n, t in state.items()}
    modules = sorted({rename(n.split(".lora_")[0]) for n in state})
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": "..", "r": spec.r,
              "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "bias": "none", "fan_in_fan_out": False,
              "target_modules": modules, "init_lora_weights": True, "inference_mode": True}  # fmt: skip
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def lora_params(model: nn.Module) -> int:
    """The number of LoRA parameters in ``model`` (0 without LoRA)."""
    return sum(int(getattr(p, "ds_numel", 0) or p.numel()) for n, p in model.named_parameters()
               if {"lora_A", "lora_B"} & set(n.split(".")))  # fmt: skip

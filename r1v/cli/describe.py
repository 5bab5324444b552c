"""``python -m r1v inspect [key=value ...] [planner.<knob>=value ...]``: what a composition is, without weights.

Composes the Hydra config exactly as ``python -m r1v.train`` would, builds the model on the meta device
(no memory, no weights read; a 38B model in seconds), applies the stage's freeze policy, and prints the
parameters per part (vision, adapter, backbone), the total, the trainable count, and the per-GPU memory
plan of :mod:`r1v.runtime.planner`. ``planner.*`` overrides are planner knobs, taken off before composing. With
``stage.lora`` it also prints the LoRA parameter count and the plan without LoRA (the wrapped layers trained whole),
saying when LoRA is what makes the composition fit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from r1v.model.build import AUDIO_PARTS, PARTS
from r1v.model.handle import create_model
from r1v.model.lora import LoraSpec, lora_layers, lora_params
from r1v.model.meta import count
from r1v.runtime import planner

PLANNER_PREFIX = "planner."


def split_overrides(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Hydra overrides and ``planner.<knob>`` values (knob -> raw string)."""
    hydra, knobs = [], {}
    for arg in args:
        if arg.startswith(PLANNER_PREFIX):
            key, sep, value = arg[len(PLANNER_PREFIX) :].partition("=")
            if not sep:
                raise ValueError(f"override {arg}: expected planner.<knob>=<value>")
            knobs[key] = value
        else:
            hydra.append(arg)
    return hydra, knobs


def largest_block(module: nn.Module) -> int:
    """Parameters of the largest element of any layer list, or of any single Linear/Embedding."""
    best = 0
    for m in module.modules():
        if isinstance(m, nn.ModuleList):
            best = max([best, *(count(child)[0] for child in m)])
        elif isinstance(m, (nn.Linear, nn.Embedding)):
            best = max(best, count(m)[0])
    return best


def _layer_list(module: nn.Module) -> nn.ModuleList | None:
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
    return max(lists, key=len, default=None)


def _vision_part(vision: nn.Module, tiles: int) -> planner.Part:
    """Encoder layers as transformer layers with a GELU MLP (width read off the layer's output Linear)."""
    layers, h = _layer_list(vision), int(vision.hidden_size)
    ffn = 4 * h
    if layers is not None and len(layers):
        widths = [m.in_features for m in layers[0].modules() if isinstance(m, nn.Linear) and m.out_features == h]
        ffn = max([w for w in widths if w != h], default=ffn)
    total, trainable = count(vision)
    tokens = tiles * (int(vision.grid_size) ** 2 + 1)  # patches + CLS per tile
    return planner.Part("vision", total, trainable, len(layers or []), planner.transformer_layer_bytes(h, h, ffn, 2),
                        h, tokens, largest_block(vision), low=low_trainable(vision))  # fmt: skip


def _adapter_part(vlm: nn.Module, tiles: int) -> planner.Part:
    adapter = vlm.adapter
    linears = [m for m in adapter.modules() if isinstance(m, nn.Linear)]
    wide = linears[0].in_features if linears else int(adapter.in_features)
    hidden = linears[0].out_features if linears else int(adapter.out_features)
    total, trainable = count(adapter)
    return planner.Part("adapter", total, trainable, 1, planner.adapter_bytes(wide, hidden), wide,
                        tiles * vlm.tokens_per_tile, largest_block(adapter), low=low_trainable(adapter))  # fmt: skip


def _backbone_part(backbone: nn.Module) -> planner.Part:
    c = backbone.config
    h, heads = int(c.hidden_size), int(c.num_attention_heads)
    head_dim = int(getattr(c, "head_dim", None) or h // heads)
    kv = int(getattr(c, "num_key_value_heads", None) or heads) * head_dim
    out = backbone.get_output_embeddings()
    vocab = int(out.weight.shape[0]) if out is not None else int(c.vocab_size)
    total, trainable = count(backbone)
    layers, ffn = int(c.num_hidden_layers), int(c.intermediate_size)
    act = planner.transformer_layer_bytes(h, kv, ffn, 4)  # SwiGLU: 4 MLP-wide tensors
    fused = layers * h * (heads * head_dim + 2 * kv + 2 * ffn)  # q|k|v and gate|up (rollout=static, fuse=true)
    merged = sum(m.base_layer.weight.numel() for m in lora_layers(backbone).values())
    return planner.Part("backbone", total, trainable, layers, act, h, None, largest_block(backbone), vocab, kv,
                        low=low_trainable(backbone), fused=fused, merged=merged)  # fmt: skip


def low_trainable(module: nn.Module) -> int:
    """Trainable parameters built in a 2-byte dtype (bf16): without DeepSpeed they keep it (r1v/runtime/optim.py)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad and p.element_size() == 2)


def _audio_parts(vlm: nn.Module, windows: int) -> list[planner.Part]:
    """The audio encoder (Whisper-style: ``window_frames / 2`` frames per window after its strided convolutions, a
    GELU MLP) and the audio adapter over the kept tokens, as a side branch of the plan."""
    audio, adapter = vlm.audio, vlm.audio_adapter
    layers, h = _layer_list(audio), int(audio.hidden_size)
    ffn = 4 * h
    if layers is not None and len(layers):
        widths = [m.in_features for m in layers[0].modules() if isinstance(m, nn.Linear) and m.out_features == h]
        ffn = max([w for w in widths if w != h], default=ffn)
    frames = windows * int(audio.window_frames) // 2
    tokens = windows * int(audio.window_frames) // int(audio.frames_per_token)
    linears = [m for m in adapter.modules() if isinstance(m, nn.Linear)]
    wide, hidden = (linears[0].in_features, linears[0].out_features) if linears else (h, h)
    (total, trainable), (a_total, a_trainable) = count(audio), count(adapter)
    return [planner.Part("audio", total, trainable, len(layers or []), planner.transformer_layer_bytes(h, h, ffn, 2),
                         h, frames, largest_block(audio), branch="audio"),
            planner.Part("audio_adapter", a_total, a_trainable, 1, planner.adapter_bytes(wide, hidden), wide, tokens,
                         largest_block(adapter), branch="audio")]  # fmt: skip


def model_parts(vlm: nn.Module, tiles_per_sample: int, audio_windows: int = 1) -> list[planner.Part]:
    """Planner inputs read off the built model, in forward order (the audio branch, when composed, before the
    backbone)."""
    audio = _audio_parts(vlm, audio_windows) if getattr(vlm, "audio", None) is not None else []
    return [_vision_part(vlm.vision, tiles_per_sample), _adapter_part(vlm, tiles_per_sample), *audio,
            _backbone_part(vlm.backbone)]  # fmt: skip


def default_settings(cfg: dict[str, Any]) -> tuple[planner.Settings, dict[str, str]]:
    """Planner settings from the config (trainer strategy and devices, model tiling, stage), and their sources."""
    trainer, stage, model = cfg.get("trainer") or {}, cfg.get("stage") or {}, cfg["model"]
    sources: dict[str, str] = {}
    strategy = trainer.get("strategy")
    zero = int(strategy.get("stage", 0)) if isinstance(strategy, dict) else 0
    sources["zero"] = "trainer.strategy.stage" if isinstance(strategy, dict) and "stage" in strategy else "default"
    devices = trainer.get("devices")
    gpus = int(devices) if isinstance(devices, int) else 8
    sources["gpus"] = "trainer.devices" if isinstance(devices, int) else f"default; trainer.devices={devices}"
    max_tiles, thumbnail = model.get("max_tiles", 1), model.get("use_thumbnail", True)
    if model.get("internvl"):  # null tiling knobs: the checkpoint folder's
        from r1v.model.internvl import folder_tiling, read_config

        max_tiles, thumbnail = folder_tiling(read_config(model["internvl"]), max_tiles, thumbnail)
    max_tiles = int(max_tiles)
    tiles = max_tiles + (1 if thumbnail and max_tiles > 1 else 0)
    rl = "grpo" in str(stage.get("name", "")) or "group_size" in stage
    rl_knobs = {}
    if rl:  # the GRPO stage's knobs (conf/stage/grpo.yaml); planner.* overrides them
        loss = stage.get("policy_loss") or {}
        group = int(stage.get("group_size", 8))
        rl_knobs = dict(group_size=group,
                        completion_len=int(stage.get("max_new_tokens", 8192)),
                        micro_batch=int(stage.get("micro_batch_size", 1)),
                        rollout_batch=int(stage.get("batch_size", 1)) * group,
                        beta=float(loss.get("beta", stage.get("beta", 0.0)) or 0.0),
                        rollout_gather="layer" if stage.get("rollout_gather") == "layer" else "whole")  # fmt: skip
        for k, src in (("group_size", "group_size"), ("completion_len", "max_new_tokens"),
                       ("micro_batch", "micro_batch_size"), ("beta", "policy_loss.beta")):  # fmt: skip
            sources[k] = f"stage.{src}"
        sources["rollout_batch"] = "stage.batch_size × stage.group_size"
        if stage.get("lora"):  # the reference is the base with LoRA off + the adapter's copy: no second model
            rl_knobs["reference"] = "trainable"
            sources["reference"] = "stage.lora"
    chunk = int(stage.get("logp_chunk" if rl else "loss_chunk_tokens") or 0)
    if chunk:
        sources["loss_chunk"] = f"stage.{'logp_chunk' if rl else 'loss_chunk_tokens'}"
    ckpt = stage.get("activation_checkpointing") or ()
    ckpt = (ckpt,) if isinstance(ckpt, str) else tuple(ckpt)
    if ckpt:
        sources["ckpt"] = "stage.activation_checkpointing"
    return planner.Settings(zero=zero, gpus=gpus, tiles=tiles, rl=rl, ckpt=ckpt, loss_chunk=chunk, **rl_knobs), \
        sources  # fmt: skip


def human(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e9:.3f}B" if n >= 1e7 else f"{n / 1e6:.2f}M"


def inspect(args: Sequence[str]) -> list[str]:
    """Compose, build on meta, freeze per stage, count and plan; returns the printed lines."""
    start = time.perf_counter()
    overrides, knobs = split_overrides(args)
    planner.parse_knobs(knobs, planner.Settings())  # a bad knob fails before anything is composed or built
    handle = create_model(None, *overrides, device="meta")  # the Python API's composition, shapes only
    cfg, vlm = handle.config, handle.vlm
    seconds = time.perf_counter() - start
    base, sources = default_settings(cfg)
    settings = planner.parse_knobs(knobs, base)
    for key in knobs:
        sources[key] = f"planner.{key}"
    parts = model_parts(vlm, settings.images * settings.tiles, settings.audio_windows)
    model = cfg["model"]
    names = ", ".join(f"{p} {model[p]['name']}" for p in (*PARTS, *(a for a in AUDIO_PARTS if model.get(a))))
    if model.get("internvl"):  # the parts come from the folder
        names = f"internvl {model['internvl']}"
    stage = cfg["stage"]
    w = max(10, *(len(p.name) + 1 for p in parts))  # the name column: 10 wide unless audio_adapter is listed
    lines = [
        f"model {model.get('preset', '?')} ({names}); built on the meta device in {seconds:.1f} s",
        f"stage {stage.get('name')}: trainable {list(stage.get('trainable') or ['all'])}",
        f"{'part':<{w}}{'parameters':>18}{'':>10}{'trainable':>18}",
    ]
    for p in parts:
        lines.append(f"{p.name:<{w}}{p.params:>18,}{human(p.params):>10}{p.trainable:>18,}")
    total, trainable = count(vlm)
    share = 100 * trainable / total if total else 0.0
    lines.append(f"{'total':<{w}}{total:>18,}{human(total):>10}{trainable:>18,}  ({human(trainable)}, {share:.2f}%)")
    lines += lora_lines(vlm, LoraSpec.from_node(stage.get("lora")), parts, settings)
    lines.append("")
    lines += planner.report(parts, settings, sources)
    return lines


def lora_lines(vlm: nn.Module, spec: LoraSpec | None, parts: list[planner.Part], s: planner.Settings) -> list[str]:
    """LoRA's parameter count and the memory plan without it: the wrapped layers' own weights trained instead (their
    gradients and AdamW states, and the activations of parts that then train), on the same settings."""
    if spec is None:
        return []
    layers = lora_layers(vlm)
    lora_in: dict[str, int] = {}
    base_in: dict[str, int] = {}
    base_low: dict[str, int] = {}  # of those, built in bf16
    for name, layer in layers.items():
        part, weight = name.split(".")[0], layer.base_layer.weight
        lora_in[part] = lora_in.get(part, 0) + lora_params(layer)
        base_in[part] = base_in.get(part, 0) + weight.numel()
        base_low[part] = base_low.get(part, 0) + (weight.numel() if weight.element_size() == 2 else 0)
    whole = [replace(p, trainable=p.trainable - lora_in.get(p.name, 0) + base_in.get(p.name, 0), merged=0,
                     low=p.low + base_low.get(p.name, 0)) for p in parts]  # fmt: skip
    with_lora, without = planner.estimate(parts, s), planner.estimate(whole, s)
    cap, gib = s.capacity, planner.GIB
    verdict = ("LoRA makes it fit" if without.total > cap >= with_lora.total else
               "both fit" if without.total <= cap else "does not fit either way")  # fmt: skip
    n_lora, n_base = sum(lora_in.values()), sum(base_in.values())
    merged = with_lora.merged
    return [
        f"LoRA r={spec.r} alpha={spec.alpha:g} on {len(layers)} linear layers (targets {list(spec.targets)}): "
        f"{n_lora:,} ({human(n_lora)}) LoRA parameters train in place of those layers' {n_base:,} ({human(n_base)})",
        f"  per GPU {with_lora.total / gib:.1f} GiB with LoRA vs {without.total / gib:.1f} GiB without LoRA (the "
        f"wrapped layers trained whole) of {cap / gib:.1f} GiB: {verdict}",
        *([f"  rollout=static decodes from a merged copy of the wrapped backbone layers: {merged / gib:.1f} GiB "
           "during rollouts (in the plan below)"] if s.rl and merged else []),
    ]  # fmt: skip

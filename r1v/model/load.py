"""Loading a trained model for inference: the one place that turns ``checkpoint=`` (a run folder, a weights file
inside one, a ``.ckpt``) plus a composition into a model in eval mode on a device.

- :func:`load_for_inference` — what ``python -m r1v.eval``, ``chat``, ``generate`` and the Python API use: the
  checkpoint's run brings its own composition (its ``config.yaml``) unless model overrides are given, and those
  must name the same parts (:func:`trained_model`).
- :func:`inference_model` — a composition exactly as configured with ``checkpoint=`` loaded on top: what the
  stages that generate outside Lightning's loop use (distill, iterative SFT, pair making).
- :func:`load_trainable` — a previous stage's weights on top of a built model (every stage's ``checkpoint=``); LoRA
  weights come with their LoRA layers (:func:`checkpoint_lora` says which), merged into the base unless kept.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from r1v.core.config import compose
from r1v.core.errors import ConfigError, WeightsError
from r1v.core.registry import get_registry
from r1v.data.video import with_data_knobs
from r1v.model.build import build
from r1v.model.lora import METADATA_KEY, LoraSpec, apply_lora, lora_layers, merge_lora
from r1v.model.sources import RANDOM_INIT
from r1v.runtime.runs import weights_of
from r1v.runtime.weights import fp32_rotary, load_into

PART_GROUPS = ("model", "vision", "adapter", "backbone")


def run_folder_of(checkpoint: str) -> Path | None:
    """The run folder a checkpoint belongs to (itself, or a parent of ``final/…`` / ``checkpoints/…``)."""
    p = Path(str(checkpoint))
    for cand in [p, *p.parents][:3]:
        if (cand / "config.yaml").is_file() and (cand / "run.json").is_file():
            return cand
    return None


def trained_model(cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The model node to evaluate: the checkpoint run's own composition, or the configured one when model
    overrides are given — refused in one line when it names other parts than the checkpoint was trained with."""
    ckpt = cfg.get("checkpoint")
    folder = run_folder_of(ckpt) if ckpt else None
    if folder is None:  # bare weights: the configured composition (a shape mismatch is one line when loading)
        return cfg["model"]
    trained = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=True)["model"]
    if not any(o.lstrip("+~").split("=")[0].split(".")[0] in PART_GROUPS for o in overrides):
        return trained  # type: ignore[return-value]

    def parts(m: dict[str, Any]) -> dict[str, Any]:
        return {"internvl": m["internvl"]} if m.get("internvl") else {p: m[p]["name"] for p in PART_GROUPS[1:]}

    if parts(trained) != parts(cfg["model"]):  # type: ignore[arg-type]
        diff = [f"{k}: {v} (checkpoint) vs {parts(cfg['model']).get(k)} (config)" for k, v in parts(trained).items()
                if parts(cfg["model"]).get(k) != v]  # type: ignore[arg-type]  # fmt: skip
        raise ConfigError(f"checkpoint {ckpt} was trained with another composition ({'; '.join(diff)}); drop the "
                          "model overrides to use the checkpoint's own, or evaluate a matching checkpoint")  # fmt: skip
    return cfg["model"]


def checkpoint_lora(checkpoint: str) -> LoraSpec | None:
    """The LoRA spec a checkpoint's weights were trained with (None: no LoRA): the weights file's metadata, else
    the run's ``config.yaml`` (``stage.lora``), else the Lightning checkpoint's ``r1v`` state."""
    path = weights_of(checkpoint)
    if path.suffix == ".safetensors" and path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(METADATA_KEY)
            if meta:
                return LoraSpec.from_node(json.loads(meta))
            if not any(".lora_A." in k for k in f.keys()):  # noqa: SIM118  (safe_open is not iterable)
                return None
    folder = run_folder_of(checkpoint)
    if folder is not None:
        node = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=False).get("stage") or {}
        if node.get("lora"):  # type: ignore[union-attr]
            return LoraSpec.from_node(node["lora"])  # type: ignore[index]
    if path.suffix == ".ckpt" and path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        return LoraSpec.from_node((state.get("r1v") or {}).get("lora"))
    return None


def load_trainable(model: torch.nn.Module, checkpoint: str, refuse_unknown: bool = False,
                   keep_lora: LoraSpec | None = None) -> LoraSpec | None:  # fmt: skip
    """Load a previous stage's weights (``checkpoint=<run folder | .safetensors | .ckpt>``) on top. With
    ``refuse_unknown``, weights the model has no place for are refused in one line (inference loads whole models;
    a stage may load a checkpoint before it adds the part some of its weights belong to, e.g. a reward head).

    A LoRA checkpoint brings its LoRA layers (injected here, before loading), which are then merged into the base
    weights, except when ``keep_lora`` is the same spec (a LoRA stage continuing the same LoRA): then they stay,
    and that spec is returned (None otherwise)."""
    path = weights_of(checkpoint)
    folder = run_folder_of(checkpoint)
    if folder is not None and (folder / RANDOM_INIT).is_file():  # the run's frozen random parts, as it had them
        load_into(model, folder / RANDOM_INIT, f"checkpoint {checkpoint} ({RANDOM_INIT})", strict=False)
    state = None
    if path.suffix == ".ckpt":
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]  # never unpickle code
        state = {k.removeprefix("model."): v for k, v in state.items()}
    names: set[str] = set(state) if state is not None else set()
    if state is None and path.is_file():
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
    spec = checkpoint_lora(checkpoint) if any(".lora_A." in n for n in names) else None
    had_lora = bool(lora_layers(model))  # LoRA layers already there (iterative SFT's next round): load into them
    if spec is not None and not had_lora:
        apply_lora(model, spec)  # the LoRA layers its weights belong to (B = 0 until loaded)
    if refuse_unknown and names:
        unknown = sorted(names - set(model.state_dict()))
        if unknown:
            raise WeightsError(
                f"checkpoint {checkpoint}: {path} holds weights the model does not have, e.g. "
                f"{unknown[0]} ({len(unknown)} in all): trained with another composition?"
            )
    if state is not None:
        model.load_state_dict(state, strict=False)
    else:
        load_into(model, path, f"checkpoint {checkpoint}", strict=False)
    if spec is not None and spec != keep_lora and not had_lora:
        merge_lora(model)
        return None
    return spec


def inference_config(checkpoint: str | None, overrides: Sequence[str] = (), device: str = "auto") -> dict[str, Any]:
    """The composed config to load ``checkpoint`` with on ``device`` (auto: CUDA when present; bf16 there)."""
    if checkpoint and not Path(checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist (a run folder or a weights file)")
    if device == "cuda" and not torch.cuda.is_available():
        raise FileNotFoundError("--device cuda: no GPU is visible here (use --device cpu)")
    cfg = compose([*overrides, *([f"checkpoint={checkpoint}"] if checkpoint else [])])
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    cfg["trainer"] = {**cfg["trainer"], "accelerator": "gpu" if use_cuda else "cpu",
                      "precision": "bf16-mixed" if use_cuda else "32-true"}  # fmt: skip
    return cfg


def load_for_inference(cfg: dict[str, Any], overrides: Sequence[str] = (),
                       keep_lora: bool = False) -> tuple[torch.nn.Module, Any, dict]:  # fmt: skip
    """(model, processor, config) of ``cfg["checkpoint"]``: its run's own composition unless ``overrides`` change
    the model (:func:`trained_model`), weights loaded, eval mode, on the trainer's device. A LoRA run's LoRA is
    merged into the base (one GEMM per layer at inference) unless ``keep_lora``."""
    cfg = {**cfg, "model": trained_model(cfg, overrides)}
    model, processor = inference_model(cfg, keep_lora)
    return model, processor, cfg


def stage_device(cfg: Mapping[str, Any]) -> torch.device:
    """The trainer's accelerator as a device: CUDA when asked for (gpu/cuda/auto) and present."""
    accel = str(cfg.get("trainer", {}).get("accelerator", "cpu"))
    return torch.device("cuda" if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")


def inference_model(cfg: Mapping[str, Any], keep_lora: bool = False) -> tuple[torch.nn.Module, Any]:
    """The composition with ``checkpoint=`` loaded, in eval mode on the stage's device (bf16 when the
    trainer's precision says so); a LoRA checkpoint's LoRA merged into the base unless ``keep_lora``."""
    with torch.random.fork_rng(devices=[]):  # parts without a pretrained source: the run's own draw of them
        torch.manual_seed(int(cfg.get("seed", 0)))
        model, processor = build(cfg["model"], get_registry())
    processor = with_data_knobs(processor, cfg.get("data"))  # the run's data.video / data.max_visual_tokens
    if cfg.get("checkpoint"):
        keep = checkpoint_lora(cfg["checkpoint"]) if keep_lora else None
        load_trainable(model, cfg["checkpoint"], refuse_unknown=True, keep_lora=keep)
    device = stage_device(cfg)
    dtype = torch.bfloat16 if device.type == "cuda" and "bf16" in str(cfg.get("trainer", {}).get("precision")) \
        else None  # fmt: skip
    model = model.to(device=device, dtype=dtype).eval()
    fp32_rotary(model)  # .to(bfloat16) rounded the rotary frequencies too
    return model, processor


def autocast(cfg: Mapping[str, Any], device: torch.device) -> Any:
    """bf16 autocast for generation and scoring outside Lightning when the trainer trains in bf16-mixed
    (the weights stay fp32 for the optimizer); a no-op on CPU."""
    if device.type == "cuda" and "bf16" in str(cfg.get("trainer", {}).get("precision")):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

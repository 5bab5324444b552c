"""Audio parts beside an InternVL-chat folder (issue 26).

The InternVL-chat layout (config.json + ``vision_model.* / mlp1.* / language_model.*`` weights) has no place for an
audio encoder, so an export of a model with one writes its audio encoder and adapter beside the folder's own files:
``audio.safetensors`` (keys as r1v names them: ``audio.*``, ``audio_adapter.*``) and an ``r1v_audio`` block in
config.json holding the two parts' config nodes (registry names and knobs: what rebuilds them). InternVL's own
loader ignores both; :func:`r1v.model.internvl.build_from_folder` reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from r1v.core.errors import ModelConfigError
from r1v.core.interfaces import LanguageBackbone
from r1v.core.registry import Registry
from r1v.data.audio import LONG_CLIPS
from r1v.model.assemble import AUDIO_PARTS
from r1v.model.contract import check_audio
from r1v.runtime.weights import WeightsError

AUDIO_FILE = "audio.safetensors"
CONFIG_KEY = "r1v_audio"
AUDIO_ADAPTER_FIXED = ("audio_hidden", "llm_hidden")  # passed by the builder, not the user


def _knobs(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != "name"}  # as r1v.model.build.knobs


def build_audio(model_cfg: Mapping[str, Any], registry: Registry,
                backbone: LanguageBackbone) -> tuple[nn.Module, nn.Module, str] | None:  # fmt: skip
    """The audio encoder and adapter of ``model.audio`` / ``model.audio_adapter`` (issue 26), with the
    ``audio.long_clips`` rule; None when no audio encoder is composed (the default)."""
    ucfg, aacfg = model_cfg.get("audio"), model_cfg.get("audio_adapter")
    if not ucfg:
        if aacfg:
            raise ModelConfigError(f"audio_adapter={aacfg['name']} needs an audio encoder: compose audio=whisper_tiny")
        return None
    if not aacfg:
        raise ModelConfigError(f"audio={ucfg['name']} needs an audio adapter: compose audio_adapter=mlp")
    extra = ("long_clips",)  # the processor's rule, not an encoder knob
    if ucfg.get("long_clips", "split") not in LONG_CLIPS:
        raise ModelConfigError(f"model.audio.long_clips: '{ucfg['long_clips']}' is not allowed (use split or refuse)")
    audio = registry.build("audio", ucfg["name"], **{k: v for k, v in _knobs(ucfg).items() if k not in extra})
    entry = registry.get("audio_adapter", aacfg["name"])
    entry.check_knobs(_knobs(aacfg), where="audio_adapter", fixed=AUDIO_ADAPTER_FIXED)
    adapter = entry.factory(audio_hidden=audio.hidden_size, llm_hidden=backbone.hidden_size, **_knobs(aacfg))
    check_audio(audio, ucfg["name"], adapter, aacfg["name"], backbone.hidden_size, model_cfg["backbone"]["name"])
    return audio, adapter, str(ucfg.get("long_clips", "split"))


def split_audio(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A VLM state dict -> (everything else, the audio parts' tensors)."""
    audio = {k: v for k, v in state.items() if k.split(".", 1)[0] in AUDIO_PARTS}
    return {k: v for k, v in state.items() if k not in audio}, audio


def write_audio(model: Any, audio: Mapping[str, torch.Tensor], folder: Path, config: dict[str, Any]) -> bool:
    """Write the audio tensors to ``folder/audio.safetensors`` and the parts' nodes into ``config`` (config.json's
    dict, written by the caller); False (nothing written) for a model without audio."""
    if not audio:
        return False
    nodes = getattr(model, "audio_config", None)
    if not nodes:
        raise WeightsError("export: the model has audio parts but no record of their config (built outside "
                           "r1v.model.build); nothing could rebuild them from the folder")  # fmt: skip
    save_file({k: v.detach().to("cpu").contiguous() for k, v in audio.items()}, str(folder / AUDIO_FILE),
              metadata={"format": "pt"})  # fmt: skip
    config[CONFIG_KEY] = {"file": AUDIO_FILE, **{p: dict(nodes[p]) for p in AUDIO_PARTS}}
    return True


def read_audio(folder: Path, config: Mapping[str, Any], backbone: Any,
               registry: Registry) -> tuple[Any, Any, str] | None:  # fmt: skip
    """The folder's audio encoder and adapter (weights loaded, every key checked) and ``long_clips``, or None when
    config.json has no ``r1v_audio`` block."""
    block = config.get(CONFIG_KEY)
    if not block:
        return None
    path = folder / str(block.get("file", AUDIO_FILE))
    if not path.is_file():
        raise WeightsError(f"internvl: {folder}: config.json has an {CONFIG_KEY} block but {path.name} is missing")
    nodes = {p: {**block[p], "pretrained": None} for p in AUDIO_PARTS}  # the weights come from the folder
    encoder, adapter, long_clips = build_audio({**nodes, "backbone": {"name": "internvl"}}, registry, backbone)
    parts = torch.nn.ModuleDict({"audio": encoder, "audio_adapter": adapter})
    state = load_file(str(path))
    missing, unexpected = parts.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"internvl: {folder}: {path.name} does not fit the {CONFIG_KEY} config: missing "
                           f"{missing[:4]}, unexpected {unexpected[:4]}")  # fmt: skip
    return encoder, adapter, long_clips

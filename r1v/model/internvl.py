"""Import and export InternVL-chat / Skywork-R1V checkpoint folders, losslessly.

A folder holds ``config.json`` (model_type internvl_chat: ``vision_config`` = InternVisionConfig fields,
``llm_config`` = a Qwen2 config, ``downsample_ratio``, ``ps_version``, ``select_layer``, tiling fields), weights
(``model.safetensors``, or shards + ``model.safetensors.index.json``) and the tokenizer. Weight names map onto
:class:`~r1v.model.vlm.VisionLanguageModel` by a pure prefix rename: ``vision_model.*`` ↔ ``vision.*`` (InternViT),
``mlp1.*`` ↔ ``adapter.*`` (``MLPAdapter``, keys 0/1/3), ``language_model.*`` ↔ ``backbone.*`` (Qwen2ForCausalLM).

Reading is safetensors only (``safe_open``: no pickle, never the folder's remote code). Key sets and shapes
are checked from the file headers before any tensor is read; tensors then stream one at a time into the
parts (memory: the model plus one tensor), which are built without random init when every weight is loaded.
``dtype='auto'`` keeps the stored dtype, so exporting an imported folder writes bit-identical tensors.
Export writes into ``<out>.tmp-<random>`` beside the target and renames it into place: never a half folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext, suppress
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from r1v.core.errors import ModelConfigError
from r1v.core.interfaces import LanguageBackbone
from r1v.core.registry import Registry, get_registry
from r1v.data.processor import Processor
from r1v.model.assemble import PARTS, assemble
from r1v.model.audio_io import AUDIO_FILE, read_audio, split_audio, write_audio
from r1v.model.audio_io import CONFIG_KEY as AUDIO_KEY
from r1v.model.vlm import VisionLanguageModel
from r1v.runtime.weights import WeightsError, zero3_active

log = logging.getLogger(__name__)

MODEL_TYPE = "internvl_chat"
RENAME = {"vision_model.": "vision.", "mlp1.": "adapter.", "language_model.": "backbone."}  # InternVL → r1v
UNRENAME = {v: k for k, v in RENAME.items()}
SECTION = {"vision_model.": "vision_config", "mlp1.": "vision_config/llm_config hidden sizes and downsample_ratio",
           "language_model.": "llm_config"}  # fmt: skip
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5_000_000_000  # Hugging Face's default max_shard_size ("5GB")
PS_DEFAULT = "v1"  # InternVLChatConfig's default ps_version; CHAT_DEFAULTS: its defaults of other fields r1v reads
CHAT_DEFAULTS: dict[str, Any] = dict(downsample_ratio=0.5, select_layer=-1, force_image_size=None,
                                     dynamic_image_size=False, max_dynamic_patch=6, use_thumbnail=False)  # fmt: skip
DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
AUX_FILES = ("*.py", "generation_config.json", "preprocessor_config.json")  # copied on re-export
NODE_KNOBS = ("dtype", "chat_template", "reasoning", "allow_missing", "attn_implementation", "max_tiles",
              "use_thumbnail")  # fmt: skip  # model-node keys passed to build_from_folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """``folder/config.json``, checked to be InternVL-chat with a Qwen2 LLM; ``ps_version`` filled in when absent."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        what = "has no config.json" if folder.is_dir() else "does not exist"
        raise FileNotFoundError(f"internvl: {folder} {what} (expected an InternVL-chat checkpoint folder)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"internvl: {path} is not valid JSON ({e})") from None
    if cfg.get("model_type") != MODEL_TYPE:
        raise ModelConfigError(f"internvl: {path} has model_type {cfg.get('model_type')!r}, not '{MODEL_TYPE}' "
                               f"(a plain LM folder loads with backbone=hf model.backbone.path={folder})")  # fmt: skip
    missing = [k for k in ("vision_config", "llm_config") if not isinstance(cfg.get(k), dict)]
    if missing:
        raise ModelConfigError(f"internvl: {path} has no {' and no '.join(missing)} (an InternVL-chat config "
                               f"nests the vision encoder's and the LLM's configs)")  # fmt: skip
    llm, qwen2 = cfg["llm_config"], ["Qwen2ForCausalLM"]
    if llm.get("architectures", qwen2) != qwen2 or llm.get("model_type", "qwen2") != "qwen2":
        raise ModelConfigError(f"internvl: {path} has llm_config architectures {llm.get('architectures')}; "
                               f"only Qwen2ForCausalLM LLMs are supported")  # fmt: skip
    if "ps_version" not in cfg:
        log.warning(
            "internvl: %s has no ps_version; using '%s', the InternVLChatConfig default. The R1V recipe says "
            "ps_version must be read from the checkpoint, never guessed: 'v1' and 'v2' differ by a transpose of "
            "the image-token grid, so a wrong value silently scrambles every image. Check which the model was "
            "trained with and write it into config.json.", path, PS_DEFAULT,
        )  # fmt: skip
        cfg["ps_version"] = PS_DEFAULT
    return cfg


def weight_files(folder: str | Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files in read order, and the index's weight_map (None for a single ``model.safetensors``)."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        weight_map = json.loads((folder / INDEX).read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"internvl: {folder / INDEX} has no weight_map")
        files = list(dict.fromkeys(weight_map.values()))
        for name in (f for f in files if not (folder / f).is_file()):
            raise FileNotFoundError(f"internvl: {folder} lacks the shard {name}, which {INDEX} lists")
        return [folder / f for f in files], weight_map
    if (folder / SINGLE).is_file():
        return [folder / SINGLE], None
    raise FileNotFoundError(f"internvl: {folder} has no weights ({SINGLE} or {INDEX})")


def _walk(folder: str | Path) -> Iterator[tuple[Any, str]]:
    files, weight_map = weight_files(folder)
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                if weight_map is None or weight_map.get(name) == path.name:
                    yield f, name


def iter_tensors(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every stored tensor as (InternVL name, tensor), one at a time, shard by shard (safetensors only)."""
    yield from ((name, f.get_tensor(name)) for f, name in _walk(folder))


def tensor_specs(folder: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """InternVL name → (shape, safetensors dtype), from the file headers only."""
    specs = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for f, name in _walk(folder)}
    _, weight_map = weight_files(folder)
    absent = [k for k in weight_map or {} if k not in specs]
    if absent:
        raise WeightsError(f"internvl: {Path(folder) / INDEX} maps {absent[0]} to {weight_map[absent[0]]}, "
                           f"which does not hold it ({len(absent)} such)")  # fmt: skip
    return specs


def to_r1v(name: str, table: Mapping[str, str] = RENAME) -> str | None:
    """An InternVL weight name as r1v's (``to_r1v(key, UNRENAME)``: back); None outside the three prefixes."""
    return next((new + name[len(old) :] for old, new in table.items() if name.startswith(old)), None)


def _dtype(dtype: str, specs: Mapping[str, tuple[Any, str]], folder: Path) -> torch.dtype:
    if dtype == "auto":  # the stored dtype (lossless); mixed files: the most common one
        counts = Counter(code for _, code in specs.values())
        code = counts.most_common(1)[0][0] if counts else "F32"
        if len(counts) > 1:
            log.warning("internvl: %s mixes dtypes %s; the model is built in %s", folder, dict(counts), code)
        if code not in DTYPES:
            raise ModelConfigError(f"internvl: {folder} stores {code} tensors; give model.dtype=bfloat16 (or float32)")
        return DTYPES[code]
    torch_dtype = getattr(torch, str(dtype), None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ModelConfigError(f"internvl: dtype '{dtype}' is not a torch dtype (auto, bfloat16, float32, ...)")
    return torch_dtype


def _tokenizer(folder: Path, chat_template: str | None) -> tuple[Any, str]:
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"internvl: {folder} holds no tokenizer ({', '.join(TOKENIZER_FILES)})")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its note that config.json's model_type is no tokenizer's is expected here
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    template = chat_template or getattr(tok, "chat_template", None)
    with suppress(OSError):  # a template string too long to be a path
        template = Path(template).read_text() if chat_template and Path(template).is_file() else template
    if not isinstance(template, str) or not template:
        raise ModelConfigError(f"internvl: the tokenizer in {folder} has no chat template and none was given; "
                               f"set model.chat_template=<jinja file or template string>")  # fmt: skip
    return tok, template


def _construct(make: Callable[[], nn.Module], fast: bool) -> nn.Module:
    """``make()``; with ``fast`` on the meta device then ``to_empty`` (no random init: every weight is loaded)."""
    if not fast:
        return make()
    device = torch.get_default_device()
    with torch.device("meta"):
        module = make()
    return module.to_empty(device=device)


def _qwen2(llm_config: Mapping[str, Any], attn_implementation: str, fast: bool) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1v.model.parts.qwen2 import no_init

    config = Qwen2Config(**llm_config)
    config._attn_implementation = attn_implementation
    with no_init() if fast else nullcontext():
        model = Qwen2ForCausalLM(config)
    if config.tie_word_embeddings:
        model.tie_weights()  # no_init_weights also skips the tying
    return model


def _gathered(tensor: torch.Tensor) -> Any:
    """Under DeepSpeed ZeRO-3, one parameter whole while rank 0 writes it (broadcast on exit)."""
    if not hasattr(tensor, "ds_id"):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([tensor], modifier_rank=0)


def load_weights(parts: nn.Module, folder: Path, specs: Mapping[str, tuple[tuple[int, ...], str]],
                 allow_missing: bool = False) -> None:  # fmt: skip
    """Check names and shapes against the headers, then stream every tensor into ``parts`` (keys as r1v's VLM)."""
    targets = parts.state_dict(keep_vars=True)  # r1v key → parameter/buffer (tied names both present)
    tied = {"backbone.lm_head.weight"} if parts.backbone.config.tie_word_embeddings else set()
    expected = {k: tuple(getattr(t, "ds_shape", t.shape)) for k, t in targets.items() if k not in tied}
    wanted, unexpected = {}, []
    for name, (shape, _) in specs.items():
        key = to_r1v(name)
        if key in tied:
            continue
        if key not in expected:
            unexpected.append(name)
            continue
        if shape != expected[key]:
            section = next(v for k, v in SECTION.items() if name.startswith(k))
            raise WeightsError(f"internvl: {folder}: {name} has shape {shape} in the weights but {expected[key]} from "
                               f"config.json ({section}); the config and the weights disagree")  # fmt: skip
        wanted[name] = key
    missing = [to_r1v(k, UNRENAME) for k in expected if k not in wanted.values()]
    if missing or unexpected:
        msg = (f"internvl: {folder}: the weights do not fit config.json: missing {len(missing)} "
               f"{missing[:4]}, unexpected {len(unexpected)} {unexpected[:4]}")  # fmt: skip
        if not allow_missing:
            raise WeightsError(f"{msg}; model.allow_missing=true starts missing weights from random init")
        log.warning("%s (allow_missing: missing weights keep their random init, unexpected ones are skipped)", msg)
    cast = 0
    with torch.no_grad():
        for name, tensor in iter_tensors(folder):
            if name in wanted:
                target = targets[wanted[name]]
                cast += tensor.dtype != target.dtype
                with _gathered(target):
                    target.copy_(tensor)
    if cast:
        log.warning("internvl: %s: %d tensors cast to the model's dtype (re-export not bit-identical)", folder, cast)


def build_from_folder(folder: str | Path, registry: Registry | None = None, *, dtype: str = "auto",
                      chat_template: str | None = None, reasoning: bool = True, allow_missing: bool = False,
                      attn_implementation: str = "sdpa", max_tiles: int | None = None,
                      use_thumbnail: bool | None = None) -> tuple[VisionLanguageModel, Processor]:  # fmt: skip
    """An InternVL-chat / Skywork-R1V folder → (VisionLanguageModel, Processor), all weights loaded.

    ``max_tiles``/``use_thumbnail``: default the folder's tiling. On the meta device only headers are read.
    """
    from r1v.model.parts.internvit import from_config
    from r1v.model.parts.qwen2 import default_dtype

    folder = Path(folder)
    cfg = {**CHAT_DEFAULTS, **read_config(folder)}
    specs = tensor_specs(folder)
    torch_dtype = _dtype(dtype, specs, folder)
    tok, template = _tokenizer(folder, chat_template)
    meta = torch.get_default_device().type == "meta"
    fast = not (allow_missing or meta or zero3_active())
    adapter_entry = (registry or get_registry()).get("adapter", "mlp")
    with default_dtype(torch_dtype):
        vision = _construct(lambda: from_config(cfg["vision_config"], int(cfg["select_layer"]),
                                                cfg["force_image_size"]), fast)  # fmt: skip
        lm = _qwen2(cfg["llm_config"], attn_implementation, fast)
        adapter = _construct(lambda: adapter_entry.factory(
            vision_hidden=vision.hidden_size, llm_hidden=lm.config.hidden_size,
            downsample_ratio=float(cfg["downsample_ratio"]), ps_version=str(cfg["ps_version"])), fast)  # fmt: skip
    if not meta:
        load_weights(nn.ModuleDict({"vision": vision, "adapter": adapter, "backbone": lm}), folder, specs,
                     allow_missing)  # fmt: skip
    backbone = LanguageBackbone(lm, tok, template, reasoning=bool(reasoning))
    audio = None if meta else read_audio(folder, cfg, backbone, registry or get_registry())
    model, processor = assemble(vision, adapter, backbone, *folder_tiling(cfg, max_tiles, use_thumbnail), audio)
    if audio is not None:  # exported again later: the same block
        model.audio_config = {p: cfg[AUDIO_KEY][p] for p in ("audio", "audio_adapter")}
    return model, processor


def folder_tiling(cfg: Mapping[str, Any], max_tiles: int | None, use_thumbnail: bool | None) -> tuple[int, bool]:
    """Tiles and thumbnail: the given values, else the folder's (``max_dynamic_patch`` when dynamic, else 1)."""
    cfg = {**CHAT_DEFAULTS, **cfg}
    if max_tiles is None:
        max_tiles = int(cfg["max_dynamic_patch"]) if cfg["dynamic_image_size"] else 1
    return int(max_tiles), bool(cfg["use_thumbnail"] if use_thumbnail is None else use_thumbnail)


def build_from_model_node(model_cfg: Mapping[str, Any], registry: Registry) -> tuple[VisionLanguageModel, Processor]:
    """``model.internvl=<folder>``: the whole model from the folder; the part nodes are ignored (logged)."""
    folder = model_cfg["internvl"]
    ignored = [f"model.{p} ({model_cfg[p].get('name')})" for p in PARTS if isinstance(model_cfg.get(p), Mapping)]
    if ignored:
        log.info("model.internvl=%s: the model comes from the folder; %s are ignored", folder, ", ".join(ignored))
    knobs = {k: model_cfg[k] for k in NODE_KNOBS if model_cfg.get(k) is not None}
    return build_from_folder(folder, registry, **knobs)


def export_config(model: VisionLanguageModel, source_config: Mapping[str, Any] | None = None,
                  max_tiles: int | None = None, use_thumbnail: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """The source's config.json updated to the model (vocab size, pixel shuffle, select_layer), or one generated."""
    from r1v.model.parts.internvit import InternViT, RMSNorm
    from r1v.model.parts.mlp import MLPAdapter

    vis, ada, lm = model.vision, model.adapter, model.backbone
    kinds = {"vision": isinstance(vis, InternViT), "adapter": isinstance(ada, MLPAdapter),
             "backbone": getattr(lm.config, "model_type", None) == "qwen2"}  # fmt: skip
    for part in (p for p, ok in kinds.items() if not ok):
        raise ModelConfigError(f"export: the {part} is a {type(getattr(model, part)).__name__}; only InternViT → mlp → "
                               f"Qwen2ForCausalLM models have an InternVL-chat layout")  # fmt: skip
    vocab = int(lm.get_input_embeddings().weight.shape[0])
    fields = {"downsample_ratio": ada.downsample_ratio, "ps_version": ada.ps_version, "select_layer": vis.select_layer}
    if source_config is not None:
        cfg = deepcopy(dict(source_config))
        cfg["llm_config"]["vocab_size"] = vocab
        cfg.update({k: v for k, v in fields.items() if cfg.get(k, CHAT_DEFAULTS.get(k)) != v})
        return cfg
    layer = vis.encoder.layers[0]
    vision_config = {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "num_channels": 3,
        "image_size": vis.embeddings.grid * vis.patch_size, "patch_size": vis.patch_size,
        "hidden_size": vis.hidden_size, "num_hidden_layers": len(vis.encoder.layers),
        "num_attention_heads": layer.attn.num_heads, "intermediate_size": layer.mlp.fc1.out_features,
        "qkv_bias": layer.attn.qkv.bias is not None, "qk_normalization": layer.attn.qk_normalization,
        "norm_type": "rms_norm" if isinstance(layer.norm1, RMSNorm) else "layer_norm",
        "layer_norm_eps": layer.norm1.eps, "hidden_act": "gelu",
    }  # fmt: skip
    llm_config = {**lm.config.to_dict(), "architectures": ["Qwen2ForCausalLM"], "vocab_size": vocab}
    tiles = int(max_tiles or 1)
    return {
        "architectures": ["InternVLChatModel"], "model_type": MODEL_TYPE, "vision_config": vision_config,
        "llm_config": llm_config, **fields, "force_image_size": vis.image_size, "template": None,
        "dynamic_image_size": tiles > 1, "min_dynamic_patch": 1, "max_dynamic_patch": tiles,
        "use_thumbnail": bool(use_thumbnail), "use_backbone_lora": 0, "use_llm_lora": 0,
        "torch_dtype": str(next(lm.parameters()).dtype).removeprefix("torch."),
    }  # fmt: skip


SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '123456' -> bytes."""
    t = text.strip().upper()
    number = t.rstrip("KMGIB")
    try:
        return int(float(number) * SIZE_UNITS[t[len(number) :]])
    except (KeyError, ValueError):
        raise ValueError(f"shard size {text}: expected bytes or a size like 5GB, 500MB, 2GiB") from None


def _shards(state: Mapping[str, torch.Tensor], limit: int) -> list[list[str]]:
    """Names grouped in order into shards of at most ``limit`` bytes (a larger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in state.items():
        if shards[-1] and size + t.nbytes > limit:
            shards, size = [*shards, []], 0
        shards[-1].append(name)
        size += t.nbytes
    return shards


def export_folder(model: VisionLanguageModel, tokenizer: Any, out_dir: str | Path,
                  source_config: Mapping[str, Any] | None = None, shard_size_bytes: int = DEFAULT_SHARD_BYTES, *,
                  chat_template: str | None = None, max_tiles: int | None = None, use_thumbnail: bool | None = None,
                  source_folder: str | Path | None = None, overwrite: bool = False) -> Path:  # fmt: skip
    """Write ``model`` as an InternVL-chat folder: config.json, safetensors shards (+ index), tokenizer.

    ``chat_template`` is saved with the tokenizer; ``source_folder``'s remote code and generation config are
    copied. Atomic: written beside ``out_dir`` as ``<name>.tmp-<random>``, then renamed into place.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"export: {out} exists (choose a new folder, or overwrite it: --overwrite)")
    if any(p.is_meta for p in model.parameters()):
        raise ModelConfigError("export: the model is on the meta device (no weights to write)")
    config = export_config(model, source_config, max_tiles, use_thumbnail)
    tied = getattr(model.backbone.config, "tie_word_embeddings", False)
    rest, audio = split_audio(model.state_dict())  # the audio parts go beside the layout (r1v.model.audio_io)
    state = {to_r1v(k, UNRENAME): v.detach().to("cpu").contiguous() for k, v in rest.items()
             if not (tied and k == "backbone.lm_head.weight")}  # fmt: skip
    groups = _shards(state, int(shard_size_bytes))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # not mkdtemp's 0700: the renamed folder is a model others may read
    try:
        for pattern in AUX_FILES if source_folder else ():
            for path in Path(source_folder).glob(pattern):
                shutil.copy2(path, tmp / path.name)
        files = [SINGLE] if len(groups) == 1 else [f"model-{i:05d}-of-{len(groups):05d}.safetensors"
                                                   for i in range(1, len(groups) + 1)]  # fmt: skip
        for file, names in zip(files, groups, strict=True):
            save_file({n: state[n] for n in names}, str(tmp / file), metadata={"format": "pt"})
        if len(groups) > 1:
            weight_map = dict(sorted((n, f) for f, names in zip(files, groups, strict=True) for n in names))
            index = {"metadata": {"total_size": sum(t.nbytes for t in state.values())}, "weight_map": weight_map}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        if write_audio(model, audio, tmp, config):
            log.info("export: the audio encoder and adapter are not part of the InternVL-chat layout: written beside "
                     "it as %s (+ config.json's %s block; r1v reads them back, InternVL ignores them)", AUDIO_FILE,
                     AUDIO_KEY)  # fmt: skip
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        old_template, tokenizer.chat_template = tokenizer.chat_template, chat_template or tokenizer.chat_template
        try:
            tokenizer.save_pretrained(str(tmp))
        finally:
            tokenizer.chat_template = old_template
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent)) if out.exists() else None
        if old:  # overwrite: the old folder aside, the new one in, then the old one removed
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("export: wrote %s (%d tensors in %d file(s))", out, len(state), len(groups))
    return out

"""Loading and saving weights as safetensors, safely (no pickle), meta- and ZeRO-3-aware."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from r1v.core.errors import WeightsError

log = logging.getLogger(__name__)


def gathered(module: nn.Module | Iterable[nn.Parameter], modifier_rank: int | None = None) -> Any:
    """Context in which DeepSpeed ZeRO-3 partitioned parameters of ``module`` (or of a list of
    parameters) are whole.

    A no-op without ZeRO-3. With ``modifier_rank=0`` the values rank 0 writes are broadcast on exit:
    weights must be loaded this way under ZeRO-3, or they land in empty partitions (the loss then
    starts in the hundreds, as seen on the H200s).

    Persistent parameters (small ones ZeRO-3 keeps whole on every rank) are left out of DeepSpeed's
    gather: they are already whole, and re-partitioning them on exit fails while a module that is
    mid-forward holds them (a rollout or reference pass inside the training step). With
    ``modifier_rank`` their new values are broadcast and written into each rank's shard here.
    """
    source = module.parameters() if isinstance(module, nn.Module) else module
    params = [p for p in source if hasattr(p, "ds_id")]
    if not params:
        return nullcontext()
    return _gathered(params, modifier_rank)


@contextmanager
def _gathered(params: list[nn.Parameter], modifier_rank: int | None) -> Iterator[None]:
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    whole = [p for p in params if getattr(p, "ds_persist", False) and p.ds_status == ZeroParamStatus.AVAILABLE]
    held = {id(p) for p in whole}
    rest = [p for p in params if id(p) not in held]
    with deepspeed.zero.GatheredParameters(rest, modifier_rank=modifier_rank) if rest else nullcontext():
        yield
    if modifier_rank is None or not whole:
        return
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if dist else 0
    with torch.no_grad():
        for p in whole:
            if dist:
                torch.distributed.broadcast(p.data, src=modifier_rank)
            shard = p.ds_tensor  # this rank's flat slice of the parameter (padded at the end)
            flat = p.data.reshape(-1)
            start = rank * shard.numel()
            n = max(0, min(shard.numel(), flat.numel() - start))
            shard.data[:n].copy_(flat[start : start + n])


def zero3_offload(engine: Any) -> Any:
    """The ZeRO-3 parameter-offload object of a DeepSpeed engine (it owns the per-module fetch/release
    hooks), or None for anything else (no engine, ZeRO-0/1/2)."""
    optimizer = getattr(engine, "optimizer", None)
    if optimizer is None or not getattr(engine, "zero_optimization_partition_weights", lambda: False)():
        return None
    return getattr(optimizer, "parameter_offload", optimizer if hasattr(optimizer, "forward_hooks") else None)


GATHER_MODES = ("auto", "whole", "layer")


def gathered_bytes(module: nn.Module) -> int:
    """Bytes a ZeRO-3 whole-model gather adds on this rank (every parameter's full size minus its local shard);
    0 without ZeRO-3."""
    total = 0
    for p in module.parameters():
        if hasattr(p, "ds_id"):
            total += max(0, int(p.ds_numel) - int(p.ds_tensor.numel())) * p.element_size()  # shards are padded
    return total


def gather_mode(module: nn.Module, engine: Any, requested: str = "auto", reserve_bytes: int = 0) -> str:
    """How a ZeRO-3 decode gets its weights: ``whole`` (gathered once: fast, the whole model in memory) or
    ``layer`` (DeepSpeed's per-module hooks fetch each layer as the decode reaches it and release it after:
    one or two layers beyond the shards, but every decode step pays the all-gather of the whole model).
    ``auto`` picks ``whole`` when the gathered model plus ``reserve_bytes`` (e.g. the KV cache) fits in 90% of
    the GPU's free memory, else ``layer``; off ZeRO-3, or off the GPU, always ``whole`` (nothing to choose)."""
    if requested not in GATHER_MODES:
        raise ValueError(f"rollout gather '{requested}' is not one of {', '.join(GATHER_MODES)}")
    if zero3_offload(engine) is None:
        return "whole"
    if requested != "auto":
        return requested
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    if device.type != "cuda":
        return "whole"
    free, _ = torch.cuda.mem_get_info(device)
    need = gathered_bytes(module) + reserve_bytes
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # every rank must agree
        flag = torch.tensor([1 if need <= 0.9 * free else 0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return "whole" if int(flag) else "layer"
    return "whole" if need <= 0.9 * free else "layer"


@contextmanager
def decode_ready(module: nn.Module, engine: Any = None, gather: str = "whole") -> Iterator[None]:
    """Context for a decode loop (rollouts, validation generation) over ``module``.

    Under ZeRO-3 with ``gather="whole"`` the parameters are gathered once for the whole block *and* the
    engine's per-module hooks are lifted for its duration: with live hooks every decode step re-enters the
    fetch/release machinery of every module (on 2 GPUs, 10x slower than ZeRO-2 even with the parameters
    gathered). The hooks are registered again on exit, with the prefetch trace invalidated (what DeepSpeed's
    own ``unwrap_model_for_generation`` and TRL do). With ``gather="layer"`` nothing is gathered up front and
    the hooks stay: each module's parameters are fetched when its forward runs and released after (a model
    whose gathered copy does not fit beside its shards, e.g. whole-model R1V3 at 38B on 8 GPUs; a module-calling
    engine such as ``rollout=hf`` is needed then). Collective under ZeRO-3: enter on every rank.
    Without ZeRO-3 only :func:`gathered` (a no-op) applies.
    """
    if gather not in ("whole", "layer"):
        raise ValueError(f"decode_ready: gather '{gather}' is not whole or layer")
    offload = zero3_offload(engine)
    if offload is not None and gather == "layer":
        yield
        return
    if offload is None or os.environ.get("R1V_ZERO3_DECODE_HOOKS") == "live":  # "live": the benchmarks' baseline
        with gathered(module):
            yield
        return
    root = offload.module  # the engine's whole module: every hook lives below it
    with gathered(root):
        for p in root.parameters():
            if hasattr(p, "ds_active_sub_modules"):
                p.ds_active_sub_modules.clear()  # else the release on exit thinks modules still use them
        for hook in [*offload.forward_hooks, *offload.backward_hooks]:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            offload._register_deepspeed_module(root)
            coordinator = offload.get_param_coordinator()
            if hasattr(coordinator, "_invalidate_trace") and not coordinator.is_invalid_trace():
                coordinator._invalidate_trace()  # older DeepSpeed does not do it on re-registration


@contextmanager
def _unpatched_constructors() -> Iterator[None]:
    """Inside ``zero.Init``, torch's tensor constructors as they are outside it (DeepSpeed's own switch)."""
    if not zero3_active():
        yield
        return
    from deepspeed.runtime.zero.partition_parameters import restore_init_context, shutdown_init_context

    shutdown_init_context()
    try:
        yield
    finally:
        restore_init_context()


def fp32_rotary(module: nn.Module) -> int:
    """Recompute rotary inverse frequencies that are not fp32 (returns how many modules were fixed).

    ``inv_freq`` is a float buffer: ZeRO-3's ``zero.Init`` creates it in bf16 (seen on the H200s: the only
    tensors that differed from ZeRO-2) and ``model.to(bfloat16)`` casts it too. Rounded to bf16 the
    angle ``position × inv_freq`` is off by radians after a few thousand tokens (R1V's chains run to
    8k), so it is recomputed, not up-cast. Works for transformers' ``*RotaryEmbedding`` modules."""
    fixed = 0
    for m in module.modules():
        inv = getattr(m, "inv_freq", None)
        if not isinstance(inv, torch.Tensor) or inv.dtype == torch.float32 or inv.is_meta:
            continue
        if not hasattr(m, "config") or not hasattr(m, "rope_type"):
            log.warning("%s: rotary inv_freq is %s and cannot be recomputed", type(m).__name__, inv.dtype)
            continue
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        fn = getattr(m, "compute_default_rope_parameters", None) if m.rope_type == "default" else None
        with _unpatched_constructors():  # inside zero.Init even torch.arange(..., dtype=float) comes out bf16
            fresh, _ = (fn or ROPE_INIT_FUNCTIONS[m.rope_type])(m.config, device=inv.device)
        m.inv_freq = nn.Buffer(fresh.float(), persistent=False)
        if isinstance(getattr(m, "original_inv_freq", None), torch.Tensor):
            m.original_inv_freq = nn.Buffer(fresh.float().clone(), persistent=False)
        fixed += 1
    return fixed


def zero3_active() -> bool:
    """True inside DeepSpeed's ``zero.Init`` (ZeRO-3 partitions every parameter as it is created)."""
    import sys

    zero = sys.modules.get("deepspeed.runtime.zero.partition_parameters")  # never import deepspeed here
    return bool(zero and getattr(zero, "zero_init_context", 0) > 0)


def skip_hf_init() -> Any:
    """Context that skips Hugging Face weight init; needed under ZeRO-3, where ``post_init`` would
    index empty partitions. Use it only when weights are loaded right after."""
    if not zero3_active():
        return nullcontext()
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def stream_folder(module: nn.Module, folder: str | Path, what: str, skip: Callable[[str], bool] | None = None) -> None:
    """Copy every tensor of ``folder``'s ``*.safetensors`` (a Hugging Face folder, sharded or not) into the
    same-named parameter or buffer of ``module``, one tensor at a time, each gathered while rank 0 writes
    it under ZeRO-3. ``skip(name)`` leaves stored tensors out on purpose (e.g. layers cut off); anything
    else the module has and the folder lacks is an error naming both."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{what}: {folder} holds no *.safetensors file (pickled .bin weights are not loaded)")
    targets = module.state_dict(keep_vars=True)  # name → parameter/buffer; tied names share one tensor
    done: set[int] = set()
    unexpected = 0
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), "pt") as stored:
                for name in stored.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    if skip and skip(name):
                        continue
                    if name not in targets:
                        unexpected += 1
                        continue
                    target, tensor = targets[name], stored.get_tensor(name)
                    shape = tuple(getattr(target, "ds_shape", target.shape))
                    if tuple(tensor.shape) != shape:
                        raise WeightsError(f"{what}: {file} holds {name} of shape {tuple(tensor.shape)} but the model "
                                           f"expects {shape}")  # fmt: skip
                    with gathered([target], modifier_rank=0):
                        target.copy_(tensor)
                    done.add(id(target))
    missing = [k for k, t in targets.items() if id(t) not in done]
    if missing:
        raise WeightsError(f"{what}: {folder} lacks {len(missing)} of the model's tensors ({missing[:3]})")
    if unexpected:
        log.info("%s: %d stored tensors the model does not use were skipped", what, unexpected)


def hf_from_folder(model_cls: Any, folder: str | Path, what: str, config: Any = None, dtype: torch.dtype | None = None,
                   skip: Callable[[str], bool] | None = None, **kwargs: Any) -> Any:  # fmt: skip
    """``model_cls.from_pretrained(folder)`` from local files, that also works under ZeRO-3.

    transformers knows ZeRO-3 only through its own ``HfDeepSpeedConfig``; inside Lightning's
    ``zero.Init`` its ``from_pretrained`` finds empty partitions and refuses ("size mismatch ... vs
    torch.Size([0])", seen on the H200s). There the model is built from the config on partitioned
    parameters, init skipped, and the folder's tensors are streamed in (:func:`stream_folder`).
    ``model_cls``: a concrete class (``Qwen2ForCausalLM``) or an Auto class.
    """
    if not zero3_active():
        return model_cls.from_pretrained(str(folder), config=config, local_files_only=True, dtype=dtype, **kwargs)
    from transformers import AutoConfig

    config = config or AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if kwargs.get("attn_implementation"):
        config._attn_implementation = kwargs["attn_implementation"]
    make = getattr(model_cls, "from_config", None) or model_cls._from_config
    with skip_hf_init():
        model = make(config, dtype=dtype) if dtype is not None else make(config)
    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()  # no_init_weights also skips the tying; tie before loading so both names fill
    stream_folder(model, folder, what, skip)
    return model


def load_into(module: nn.Module, path: str | Path, what: str, strict: bool = True) -> None:
    """Load a safetensors file into ``module``; errors name ``what`` and the file.

    Skipped on the meta device (``inspect`` builds models without weights).
    """
    if any(p.is_meta for p in module.parameters()):
        return
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: weights file {path} does not exist")
    state = load_file(str(path))
    with gathered(module, modifier_rank=0):
        own = module.state_dict()
        for key, tensor in state.items():
            if key in own and own[key].shape != tensor.shape:
                raise WeightsError(
                    f"{what}: {path} holds {key} of shape {tuple(tensor.shape)} but the model expects "
                    f"{tuple(own[key].shape)}"
                )
        missing, unexpected = module.load_state_dict(state, strict=False)
        tied = getattr(module, "_tied_weights_keys", None) or []  # HF: dict (v5) or list (v4) of tied names
        if getattr(getattr(module, "config", None), "tie_word_embeddings", False) and hasattr(module, "tie_weights"):
            module.tie_weights()
            missing = [k for k in missing if k not in tied]
    if strict and (missing or unexpected):
        raise WeightsError(
            f"{what}: {path} does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


@contextmanager
def full_state(module: nn.Module, names: set[str]) -> Iterator[dict[str, torch.Tensor]]:
    """The named parameters, whole (gathered under ZeRO-3), as CPU tensors. Collective: call on every rank."""
    with gathered(module):
        yield {n: p.detach().to("cpu").contiguous() for n, p in module.named_parameters() if n in names}


def to_cpu_contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

"""Loading and saving weights as safetensors, safely (no pickle), meta- and ZeRO-3-aware."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn


class WeightsError(ValueError):
    """A weights file that does not fit the model (one line: file, tensor, shapes)."""


def gathered(module: nn.Module | Iterable[nn.Parameter], modifier_rank: int | None = None) -> Any:
    """Context in which DeepSpeed ZeRO-3 partitioned parameters of ``module`` (or of a list of
    parameters) are whole.

    A no-op without ZeRO-3. With ``modifier_rank=0`` the values rank 0 writes are broadcast on exit:
    weights must be loaded this way under ZeRO-3, or they land in empty partitions (the loss then
    starts in the hundreds, as seen on the H200s).
    """
    source = module.parameters() if isinstance(module, nn.Module) else module
    params = [p for p in source if hasattr(p, "ds_id")]
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def zero3_offload(engine: Any) -> Any:
    """The ZeRO-3 parameter-offload object of a DeepSpeed engine (it owns the per-module fetch/release
    hooks), or None for anything else (no engine, ZeRO-0/1/2)."""
    optimizer = getattr(engine, "optimizer", None)
    if optimizer is None or not getattr(engine, "zero_optimization_partition_weights", lambda: False)():
        return None
    return getattr(optimizer, "parameter_offload", optimizer if hasattr(optimizer, "forward_hooks") else None)


@contextmanager
def decode_ready(module: nn.Module, engine: Any = None) -> Iterator[None]:
    """Context for a decode loop (rollouts, validation generation) over ``module``.

    Under ZeRO-3 the parameters are gathered once for the whole block *and* the engine's per-module
    hooks are lifted for its duration: with live hooks every decode step re-enters the fetch/release
    machinery of every module (on 2 GPUs, 10x slower than ZeRO-2 even with the parameters gathered).
    The hooks are registered again on exit, with the prefetch trace invalidated (what DeepSpeed's own
    ``unwrap_model_for_generation`` and TRL do). Collective under ZeRO-3: enter on every rank.
    Without ZeRO-3 only :func:`gathered` (a no-op) applies.
    """
    offload = zero3_offload(engine)
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

"""Loading and saving weights as safetensors, safely (no pickle), meta- and ZeRO-3-aware."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn


class WeightsError(ValueError):
    """A weights file that does not fit the model (one line: file, tensor, shapes)."""


def gathered(module: nn.Module, modifier_rank: int | None = None) -> Any:
    """Context in which DeepSpeed ZeRO-3 partitioned parameters of ``module`` are whole.

    A no-op without ZeRO-3. With ``modifier_rank=0`` the values rank 0 writes are broadcast on exit:
    weights must be loaded this way under ZeRO-3, or they land in empty partitions (the loss then
    starts in the hundreds, as seen on the H200s).
    """
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


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

"""Loading and saving weights as safetensors, safely (no pickle) and meta-device aware."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


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
    own = module.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            raise ValueError(
                f"{what}: {path} holds {key} of shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(own[key].shape)}"
            )
    missing, unexpected = module.load_state_dict(state, strict=False)
    loaded_ptrs = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in missing if own[k].data_ptr() not in loaded_ptrs]  # tied weights (lm_head)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{what}: {path} does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def to_cpu_contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

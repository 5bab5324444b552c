"""Opt-in maintained GPU kernels for training (``stage.kernels``): ``none`` (default) or ``liger``.

``liger`` swaps in Liger-Kernel's Triton kernels (a maintained library) on the backbone's *instances*, never by
Liger's ``apply_liger_kernel_to_*`` functions, which replace transformers' classes and module functions for the
whole process (every model built afterwards, the reference and reward models included, would change):

- each RMSNorm (a module with ``weight`` and ``variance_epsilon``, as Qwen2's and Llama's): Liger's fused RMSNorm
  in transformers' casting ("llama": the norm in float32, the weight applied in the input dtype);
- each SwiGLU MLP (``gate_proj``/``up_proj``/``down_proj``, SiLU): the SiLU-and-multiply as one kernel;
- the LM head, where the training loss and GRPO's log-probs read it (:func:`r1v.rl.grpo.chunked_logprobs`; not
  under ZeRO-3, whose head weight exists only inside the module's own call):
  Liger's fused linear cross-entropy with ``reduction="none"`` (the per-token log-probs, chunked, the logits
  never held whole, the gradient recomputed in the backward), in place of the chunked head + float32
  log-softmax. With entropies asked for (a GRPO metric), one extra no-grad pass over the head computes them.

Rotary embeddings stay transformers' own: Liger patches them only through the module function (global).
Liger's kernels need a CUDA device: on any other device a patched module runs its original code (the CPU CI
and the CPU trainer run unchanged). ``tests/gpu/test_kernels_gpu.py`` checks both paths agree on the GPU;
``benchmarks/liger_kernels.py`` measures them against the built-in path and ``torch.compile``.
"""

from __future__ import annotations

import logging
from types import MethodType
from typing import Any

import torch

from r1v.core.errors import ConfigError
from r1v.core.registry import did_you_mean

log = logging.getLogger(__name__)
KERNELS = ("none", "liger")
FUSED_HEAD = "_r1v_fused_head"  # attribute on an LM head module: its log-probs go through Liger's fused kernel


def check_kernels(name: str) -> str:
    """``stage.kernels``'s value, checked: one line naming the option, the choices, and the package when missing."""
    name = str(name)
    if name not in KERNELS:
        raise ConfigError(f"stage.kernels: '{name}' is not one of {', '.join(KERNELS)}{did_you_mean(name, KERNELS)}")
    if name == "liger":
        try:
            import liger_kernel.ops  # noqa: F401
        except ImportError as e:
            raise ConfigError(f"stage.kernels=liger needs the liger-kernel package ({e}): pip install "
                              "'liger-kernel>=0.8,<0.9', or stage.kernels=none") from None  # fmt: skip
    return name


def apply_kernels(model: Any, name: str) -> dict[str, int]:
    """Patch ``model.backbone``'s modules for kernels ``name``; returns how many of each kind were patched."""
    if check_kernels(name) == "none":
        return {}
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    def rms_norm(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return type(self).forward(self, x)
        return LigerRMSNormFunction.apply(x, self.weight, self.variance_epsilon, 0.0, "llama", True)

    def swiglu(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return type(self).forward(self, x)
        return self.down_proj(LigerSiLUMulFunction.apply(self.gate_proj(x), self.up_proj(x)))

    backbone = model.backbone
    counts = {"rms_norm": 0, "swiglu": 0, "fused_linear_logprobs": 0}
    for module in backbone.modules():
        if is_rms_norm(module):
            module.forward = MethodType(rms_norm, module)
            counts["rms_norm"] += 1
        elif is_swiglu(module):
            module.forward = MethodType(swiglu, module)
            counts["swiglu"] += 1
    head = backbone.get_output_embeddings()
    if isinstance(head, torch.nn.Linear):
        setattr(head, FUSED_HEAD, True)
        counts["fused_linear_logprobs"] = 1
    log.info("stage.kernels=liger: %s (Liger-Kernel, on CUDA tensors; other devices run the built-in code)",
             ", ".join(f"{n} {k}" for k, n in counts.items()))  # fmt: skip
    return counts


def is_rms_norm(module: torch.nn.Module) -> bool:
    """Transformers' RMSNorm shape (Qwen2RMSNorm, LlamaRMSNorm): a 1-D ``weight`` and ``variance_epsilon``."""
    w = getattr(module, "weight", None)
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and (
        isinstance(w, torch.Tensor) and w.dim() == 1)  # fmt: skip


def is_swiglu(module: torch.nn.Module) -> bool:
    """A gated MLP ``down(silu(gate(x)) * up(x))`` (Qwen2MLP, LlamaMLP with SiLU)."""
    act = getattr(module, "act_fn", None)
    silu = isinstance(act, torch.nn.SiLU) or getattr(getattr(module, "config", None), "hidden_act", None) == "silu"
    return silu and all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))


def fused_head(head: torch.nn.Module, h: torch.Tensor) -> bool:
    """True when ``head``'s log-probs over ``h`` go through Liger's fused linear cross-entropy. Not under ZeRO-3:
    the kernel reads the weight tensor itself, outside the module call where ZeRO-3 gathers its shards."""
    weight = getattr(head, "weight", None)
    return bool(getattr(head, FUSED_HEAD, False)) and h.is_cuda and not hasattr(weight, "ds_id")


def fused_logprobs(head: torch.nn.Linear, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[B, T, D]`` hidden states and ``[B, T]`` targets -> ``[B, T]`` log-probs by Liger's fused linear
    cross-entropy (``reduction="none"``: each token's loss is ``−log p``). Under autocast the hidden states and the
    head's weight go to the autocast dtype first, as the head's matmul would (the kernel runs outside autocast)."""
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

    b, t, d = h.shape
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else h.dtype
    weight = head.weight.to(dtype)
    bias = head.bias.to(dtype) if head.bias is not None else None
    with torch.autocast("cuda", enabled=False):
        loss = LigerFusedLinearCrossEntropyFunction.apply(h.reshape(b * t, d).to(dtype), weight,
                                                          targets.reshape(b * t), bias, None, -100, 0.0, 0.0,
                                                          "none")[0]  # fmt: skip
    return -loss.float().view(b, t)

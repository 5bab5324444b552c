"""Batched next-token choice on the device, one knob value per row, with no host synchronisation.

The order and rules are transformers' (so the ``hf`` engine is the reference): repetition penalty
(CTRL: a seen token's positive logit divided by P, a negative one multiplied) → temperature → top-p
(keep the most probable tokens until their mass reaches p; the token that crosses p is kept) → a
draw. The draw is an exponential race — ``argmax(p_i / E_i)`` with ``E_i ~ Exp(1)`` picks ``i`` with
probability ``p_i`` — instead of ``torch.multinomial``, which synchronises with the host and so
cannot live in a CUDA graph.

Top-p methods (``top_p_method``): ``sort`` (:func:`top_p_filter`, transformers' rule verbatim), ``bisect``
(:func:`top_p_bisect`, torch ops), ``triton`` (:mod:`r1v.generation.triton_topp`: temperature, top-p and
the draw in one kernel, one program per row; CUDA only, needs triton, imported lazily), ``triton_split``
(:mod:`r1v.generation.triton_topp_split`: the same rule in fewer sequential passes over each row, the max, Z
and the draw spread over several programs per row; opt-in until timed on a GPU: benchmarks/topp_kernel.py) and
``auto`` (``triton`` for CUDA logits when triton imports, else ``sort``). All use the same noise from torch's RNG, so
a seed gives the same tokens whichever method runs (up to float ties at the nucleus boundary and in the race).
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass
from typing import Literal

import torch

# the annotation composition checks knobs against
TopPMethod = Literal["auto", "sort", "bisect", "triton", "triton_split"]
TOP_P_METHODS: tuple[str, ...] = typing.get_args(TopPMethod)


@dataclass
class Knobs:
    """Per-row sampling knobs, (B,) float32 tensors on the device (None: off for every row).

    ``use_top_p`` and ``use_penalty`` are decided once per batch on the host, so a captured step never
    carries the sort or the penalty pass when no row needs them.
    """

    temperature: torch.Tensor
    top_p: torch.Tensor | None
    penalty: torch.Tensor | None

    @classmethod
    def build(cls, temperature: list[float], top_p: list[float], penalty: list[float],
              device: torch.device) -> Knobs:  # fmt: skip
        t = torch.tensor(temperature, dtype=torch.float32, device=device)
        p = torch.tensor(top_p, dtype=torch.float32, device=device) if any(x < 1.0 for x in top_p) else None
        r = torch.tensor(penalty, dtype=torch.float32, device=device) if any(x != 1.0 for x in penalty) else None
        return cls(t, p, r)


def penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """(B, V) logits, (B, V) bool seen tokens, (B,) factors -> penalised logits (CTRL rule, row-wise)."""
    p = penalty[:, None]
    return torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)


def top_p_filter(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask to -inf every token outside the row's nucleus (transformers' TopPLogitsWarper rule).

    A token is dropped when the probability mass strictly above it already reaches p; the most
    probable token is always kept.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(-1)
    above = probs.cumsum(-1) - probs  # mass of the tokens ranked before each one
    drop = above >= top_p[:, None]
    drop[:, 0] = False
    return logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))


def top_p_bisect(logits: torch.Tensor, top_p: torch.Tensor, iters: int = 32) -> torch.Tensor:
    """:func:`top_p_filter` without a sort: bisect for the row's logit threshold.

    With ``f(t)`` = probability mass of the logits strictly above ``t`` (decreasing in t), a token is
    kept iff ``f(its logit) < p``, i.e. iff its logit ≥ ``t* = min{t : f(t) < p}``. Bisection on
    ``[max − 100, max]`` keeps ``f(lo) ≥ p > f(hi)``, so ``lo < t* ≤ hi``; 32 halvings leave an interval
    of 2e-8 nats, below float32 resolution for logits of magnitude ≥ 0.25, so "logit > lo" is the
    sort's kept set up to float rounding.
    Tokens more than 100 nats below the top have ``exp`` = 0 in float32 and can never be needed to
    reach p < 1. Each halving is one masked reduction over the row (one fused kernel when compiled);
    32 of them cost far less than a full-vocabulary sort (measured: benchmarks/rollout_engine.py).
    """
    top = logits.max(-1, keepdim=True).values  # (B, 1)
    e = (logits - top).exp()  # (B, V), max 1
    goal = top_p[:, None] * e.sum(-1, keepdim=True)
    lo, hi = top - 100.0, top  # f(lo) ≈ Z ≥ p·Z; f(top) = 0 < p·Z
    for _ in range(iters):
        mid = (lo + hi) / 2
        below = torch.where(logits > mid, e, 0.0).sum(-1, keepdim=True) < goal  # f(mid) < p·Z
        hi = torch.where(below, mid, hi)
        lo = torch.where(below, lo, mid)
    # t* is itself a token's logit and hi may sit a hair above it; lo < t* with no logit in between
    return logits.masked_fill(logits <= lo, float("-inf"))


@functools.cache
def triton_available() -> bool:
    """Whether triton imports here (the CPU CI has none); checked once per process."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def resolve_top_p_method(method: str, device: torch.device) -> str:
    """``auto`` -> ``triton`` on a CUDA device where triton imports, else ``sort``; other methods as given.
    Inside a whole rollout on the H200 the kernel took a top-p decode step from 4.23 to 3.15 ms (1.34×,
    benchmarks/README.md); it draws the same tokens as the sort for the same seed."""
    if method not in TOP_P_METHODS:
        raise ValueError(f"top_p_method '{method}' is not one of {', '.join(TOP_P_METHODS)}")
    if method == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "sort"
    return method


def choose(logits: torch.Tensor, knobs: Knobs, greedy: bool, seen: torch.Tensor | None,
           top_p_method: str = "sort") -> torch.Tensor:  # fmt: skip
    """(B, V) float32 logits -> (B,) next tokens; ``top_p_method`` is one of :data:`TOP_P_METHODS`."""
    penalty = knobs.penalty if seen is not None else None
    return draw(logits, seen, penalty, knobs.temperature, knobs.top_p, greedy, top_p_method)


def draw(logits: torch.Tensor, seen: torch.Tensor | None, penalty: torch.Tensor | None, temperature: torch.Tensor,
         top_p: torch.Tensor | None, greedy: bool, top_p_method: str) -> torch.Tensor:  # fmt: skip
    """:func:`choose` on plain tensors (what ``torch.compile`` wraps: no objects to guard on).

    (B, V) logits, (B, V) bool ``seen``, (B,) ``penalty``/``temperature``/``top_p`` -> (B,) int64 tokens.
    """
    if penalty is not None and seen is not None:
        logits = penalise(logits, seen, penalty)
    if greedy:
        return logits.argmax(-1)
    method = resolve_top_p_method(top_p_method, logits.device) if top_p is not None else None
    if method in ("triton", "triton_split"):
        from .triton_topp_split import top_p_sample  # lazy: triton is optional

        logits = logits.float().contiguous()  # (B, V), a no-op for the engine's float32 logits
        race = torch.empty_like(logits).exponential_()  # (B, V), the same draws as the torch path below
        return top_p_sample(logits, temperature, top_p, race, split=method == "triton_split")
    logits = logits / temperature[:, None]
    if top_p is not None:
        logits = top_p_bisect(logits, top_p) if method == "bisect" else top_p_filter(logits, top_p)
    probs = logits.softmax(-1)
    race = torch.empty_like(probs).exponential_()
    return (probs / race).argmax(-1)

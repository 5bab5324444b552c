"""Temperature → top-p → exponential-race draw in one Triton kernel: one program per row, no host sync.

:func:`r1v.generation.sampling.top_p_filter` sorts the whole vocabulary (~1.3 ms per decode step at
B = 64, V = 151,936 on an H200). Here one program loops over its row (600 KB of float32, L2-resident)
and finds the nucleus threshold by bisection instead, then draws. With ``s = logit / T`` (multiplied by
``1/T``: at most one ulp from torch's ``logit / T``), ``e = exp(s − max s)``, ``Z = Σ e`` and
``f(t)`` = Σ e over ``s > t`` (the mass strictly above t, decreasing in t), a token is kept iff
``f(s) < p·Z`` — transformers' rule as :func:`top_p_filter` applies it (the mass ranked above a token must
stay below p; the top token is always kept), up to float ties and summation order. The search keeps
``f(lo) ≥ p·Z > f(hi)`` on the monotone integer *key* of the float bits (``key(x) < key(y) ⇔ x < y``),
so it ends with ``hi = lo + 1``: the kept set is exactly ``{s > float(lo)}`` under this ``f``.

Per row (one program; the row loops step BLOCK tokens at a time):

1. ``max s``; 2. ``Z``. The search starts at ``lo = max + log((1 − p)·Z / 2V)`` (the mass at or below
   it is at most ``V·exp(lo − max) ≤ (1 − p)Z/2``, so ``f(lo) ≥ p·Z``) and ``hi = max`` (``f = 0``).
3. Halvings over the full row (value midpoints while the interval is wider than 1e-3, key midpoints
   after), each pass also counting the tokens in either half, until at most CAP tokens lie in
   ``(lo, hi]`` (for LM logits one or two passes: the start interval holds the sparse top of the row).
4. One pass lists those candidates (row order, per-row scratch); they go into registers, where the
   remaining ≤ 32 halvings cost no memory traffic (``f = f(hi) + Σ`` candidates above the midpoint).
5. The draw: ``argmax`` over kept tokens of ``e / E`` with the given ``E ~ Exp(1)`` noise (torch's RNG,
   so the kernel stays graph-capturable and uses the same draws as the torch paths); ties go to the
   lowest index, as ``torch.argmax``. The noise is read only where a token is kept.

Measured on an H200 at B = 64, V = 151,936 (tests/gpu/test_triton_topp_gpu.py): 0.37-0.43 ms per call
on broad random logits, ~0.2 ms on Zipf-like ones, against 1.5-1.6 ms for the sort. One program per row
leaves half the H200's 132 SMs idle at B = 64 and each pass is bound by one SM's L2 latency, so the
pass count is what costs. A row whose candidates never fit (thousands of tied logits at the threshold)
ends by halvings over the row alone (at most ~60 passes).
:mod:`r1v.generation.triton_topp_split` (what ``top_p_method=triton`` runs) cuts those passes: a parallel
(row, chunk) pre-pass for steps 1-2, four-way search passes, a parallel draw; this single-program kernel stays
as its ``split=False`` and the reference its tests compare against.
Rows with ``p ≥ 1`` keep every token (no search). Everything is a fixed-order reduction: the result is
deterministic given the noise. Importing this module needs triton; :mod:`r1v.generation.sampling`
imports it lazily. Under ``TRITON_INTERPRET=1`` (set before triton is first imported) it runs on CPU
tensors through triton's interpreter (the unit tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK = 8192  # elements per loop step over the row (8192 / 16 warps: best of 1024-8192 / 4-16 on an H200)
CAP = 4096  # most candidates the register phase holds (power of two)
NUM_WARPS = 16
_KEY_NEG_INF = tl.constexpr(-2139095041)  # key(-inf): bits 0xFF800000 ^ 0x7FFFFFFF as int32


@triton.jit
def _key(x):
    """float32 -> int32 with the floats' order (-0.0 sorts just below +0.0)."""
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def _unkey(k):
    """int64 key (within int32 range) -> the float32 it encodes (the map is its own inverse)."""
    b = k.to(tl.int32)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)


@triton.jit
def _row(lrow, o, V, inv_t):
    """(BLOCK,) scaled logits ``s`` at offsets ``o`` (``-inf`` past the row's end)."""
    return tl.load(lrow + o, mask=o < V, other=float("-inf")) * inv_t


@triton.jit
def _refine(lrow, crow, V, inv_t, lo, hi, base, goal, m, BLOCK: tl.constexpr, CAP: tl.constexpr):
    """Step 4: the ≤ CAP candidates in (lo, hi] to the row's scratch ``crow`` (row order), then the remaining
    halvings on them in registers; returns the final ``lo`` (the kept set is ``{s > float(lo)}``)."""
    lo_f = _unkey(lo)
    hi_f = _unkey(hi)
    offs = tl.arange(0, BLOCK)
    cnt = tl.zeros([], tl.int32)
    for start in range(0, V, BLOCK):
        s = _row(lrow, start + offs, V, inv_t)
        cand = (s > lo_f) & (s <= hi_f)
        pos = cnt + tl.cumsum(cand.to(tl.int32), 0) - 1
        tl.store(crow + pos, s, mask=cand & (pos < CAP))
        cnt += tl.sum(cand.to(tl.int32), 0)
    tl.debug_barrier()  # the stores above are read back by other threads of this program
    c = tl.arange(0, CAP)
    sc = tl.load(crow + c, mask=c < cnt, other=float("-inf"))  # (CAP,) candidates' s
    ec = tl.exp(sc - m)
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        below = base + tl.sum(tl.where(sc > _unkey(mid), ec, 0.0), 0) < goal
        hi = tl.where(below, mid, hi)
        lo = tl.where(below, lo, mid)
    return lo


@triton.jit
def _top_p_kernel(
    logits_ptr,  # (B, V) float32, unit stride along V
    noise_ptr,  # (B, V) float32 Exp(1) draws (unused when not DRAW)
    temp_ptr,  # (B,) float32
    top_p_ptr,  # (B,) float32
    cand_ptr,  # (B, CAP) float32 scratch: s of the tokens in (lo, hi]
    token_ptr,  # (B,) int64 out
    thr_ptr,  # (B,) float32 out: kept iff logit * (1/T) > thr
    stats_ptr,  # (B, 2) int32 out: full passes over the row; 2 if the register phase ran, else 0
    V,
    stride_l,
    stride_n,
    BLOCK: tl.constexpr,
    CAP: tl.constexpr,
    DRAW: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    lrow = logits_ptr + row * stride_l
    inv_t = 1.0 / tl.load(temp_ptr + row)
    p = tl.load(top_p_ptr + row)
    offs = tl.arange(0, BLOCK)
    neg_inf = float("-inf")

    # 1. max of s = logit / T
    mx = tl.full([BLOCK], neg_inf, tl.float32)
    for start in range(0, V, BLOCK):
        mx = tl.maximum(mx, _row(lrow, start + offs, V, inv_t))
    m = tl.max(mx, 0)
    # 2. Z = Σ exp(s − m)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        acc += tl.exp(_row(lrow, start + offs, V, inv_t) - m)  # past the end: exp(-inf) = 0
    z = tl.sum(acc, 0)
    goal = p * z

    full = p >= 1.0  # keep everything: no search
    lo = tl.where(full, _KEY_NEG_INF, _key(m + tl.log(tl.maximum(1.0 - p, 1e-30) * z / (2.0 * V))).to(tl.int64))
    hi = tl.where(full, _KEY_NEG_INF + 1, _key(m).to(tl.int64))
    base = z * 0.0  # f(hi): the mass strictly above float(hi)
    n = V  # tokens in (lo, hi] (an upper bound until the first pass)
    passes = tl.full([], 2, tl.int32)
    mode = tl.zeros([], tl.int32)

    # 3. halvings over the full row until the candidates (lo, hi] fit in registers
    while (hi - lo > 1) & (n > CAP):
        lo_f = _unkey(lo)
        hi_f = _unkey(hi)
        vmid = _key(lo_f + 0.5 * (hi_f - lo_f)).to(tl.int64)  # value midpoint while the interval is wide
        mid = tl.where(hi_f - lo_f > 1e-3, vmid, lo + (hi - lo) // 2)
        mid = tl.minimum(tl.maximum(mid, lo + 1), hi - 1)
        mid_f = _unkey(mid)
        mass = tl.zeros([BLOCK], tl.float32)
        n_up = tl.zeros([BLOCK], tl.int32)  # in (mid, hi]
        n_dn = tl.zeros([BLOCK], tl.int32)  # in (lo, mid]
        for start in range(0, V, BLOCK):
            s = _row(lrow, start + offs, V, inv_t)
            above = s > mid_f
            mass += tl.where(above, tl.exp(s - m), 0.0)
            n_up += (above & (s <= hi_f)).to(tl.int32)
            n_dn += ((s > lo_f) & (s <= mid_f)).to(tl.int32)
        f = tl.sum(mass, 0)
        below = f < goal  # t* ≤ mid: the threshold is in (lo, mid]
        hi = tl.where(below, mid, hi)
        lo = tl.where(below, lo, mid)
        base = tl.where(below, f, base)
        n = tl.where(below, tl.sum(n_dn, 0), tl.sum(n_up, 0))
        passes += 1

    if hi - lo > 1:
        # 4. the ≤ CAP candidates (lo, hi] to scratch (row order), then the remaining halvings in registers
        lo = _refine(lrow, cand_ptr + row * CAP, V, inv_t, lo, hi, base, goal, m, BLOCK, CAP)
        passes += 1
        mode = tl.full([], 2, tl.int32)

    thr = _unkey(lo)
    tl.store(thr_ptr + row, thr)
    if DRAW:
        # 5. exponential race over the kept tokens: argmax e / E, first index on ties
        nrow = noise_ptr + row * stride_n
        best = tl.full([BLOCK], -1.0, tl.float32)
        bidx = tl.zeros([BLOCK], tl.int32)
        for start in range(0, V, BLOCK):
            o = start + offs
            s = _row(lrow, o, V, inv_t)
            kept = s > thr
            noise = tl.load(nrow + o, mask=kept, other=1.0)
            r = tl.where(kept, tl.exp(s - m) / noise, -1.0)
            upd = r > best  # strict: a lane keeps its earlier index on ties
            best = tl.where(upd, r, best)
            bidx = tl.where(upd, o, bidx)
        tok = tl.min(tl.where(best == tl.max(best, 0), bidx, V), 0)
        tl.store(token_ptr + row, tok.to(tl.int64))
        passes += 1
    tl.store(stats_ptr + 2 * row, passes)
    tl.store(stats_ptr + 2 * row + 1, mode)


def _check(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.dtype != torch.float32 or logits.stride(-1) != 1:
        raise ValueError(f"triton top-p: logits must be (B, V) float32 with unit stride, got {tuple(logits.shape)} "
                         f"{logits.dtype} strides {logits.stride()}")  # fmt: skip
    if not logits.is_cuda and not os.environ.get("TRITON_INTERPRET", "") == "1":
        raise ValueError("triton top-p: logits must be on a CUDA device (or run under TRITON_INTERPRET=1)")
    if temperature.shape != logits.shape[:1] or top_p.shape != logits.shape[:1]:
        raise ValueError("triton top-p: temperature and top_p must be (B,)")


def _launch(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, noise: torch.Tensor | None,
            block: int = BLOCK, cap: int = CAP,
            num_warps: int = NUM_WARPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Run the kernel -> ((B,) int64 tokens (undefined without noise), (B,) float32 thresholds, (B, 2) int32
    stats: full passes over the row, and 2 where the (lo, hi] list and the register phase ran, else 0)."""
    _check(logits, temperature, top_p)
    b, v = logits.shape
    dev = logits.device
    temperature = temperature.to(torch.float32).contiguous()
    top_p = top_p.to(torch.float32).contiguous()
    tokens = torch.empty(b, dtype=torch.int64, device=dev)
    thr = torch.empty(b, dtype=torch.float32, device=dev)
    stats = torch.empty(b, 2, dtype=torch.int32, device=dev)
    if b == 0:
        return tokens, thr, stats
    cand = torch.empty(b, cap, dtype=torch.float32, device=dev)  # (B, CAP) scratch
    block = min(block, triton.next_power_of_2(v))
    draw = noise is not None
    _top_p_kernel[(b,)](logits, noise if draw else logits, temperature, top_p, cand, tokens, thr, stats, v,
                        logits.stride(0), noise.stride(0) if draw else 0, BLOCK=block, CAP=cap, DRAW=draw,
                        num_warps=num_warps)  # fmt: skip
    return tokens, thr, stats


def top_p_sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, noise: torch.Tensor,
                 block: int = BLOCK, cap: int = CAP) -> torch.Tensor:  # fmt: skip
    """(B, V) float32 logits, (B,) temperatures, (B,) top-p, (B, V) Exp(1) noise -> (B,) int64 tokens.

    The token is ``argmax`` over the row's nucleus of ``exp(logit/T − max) / noise`` — with the same noise,
    what ``(top_p_filter(logits / T, top_p).softmax(-1) / noise).argmax(-1)`` gives, up to float ties.
    One launch, no host synchronisation (CUDA-graph capturable), deterministic given the noise.
    """
    if noise.shape != logits.shape or noise.dtype != torch.float32 or noise.stride(-1) != 1:
        raise ValueError("triton top-p: noise must be float32 of the logits' shape with unit stride")
    return _launch(logits, temperature, top_p, noise, block, cap)[0]


def top_p_threshold(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, block: int = BLOCK,
                    cap: int = CAP) -> torch.Tensor:  # fmt: skip
    """(B,) float32 thresholds: the kernel keeps token i of row b iff ``logits[b, i] / T[b] > thr[b]``
    (``s`` computed as ``logit * (1/T)``, as in the kernel); ``-inf`` where ``top_p ≥ 1``."""
    return _launch(logits, temperature, top_p, None, block, cap)[1]

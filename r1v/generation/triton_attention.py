"""Decode attention in Triton: one new query per row over the filled part of a static KV cache, split-K.

The SDPA path (:func:`r1v.generation.decoder.attend`) reads whole 128-column windows of the cache, padding
included, under an additive mask, and its kernel is not a split-K decode kernel: at B = 64 it took 0.47 ms
per step on an H200 against 0.21 ms of KV actually filled. Here each (row, KV head) program reads only
columns ``[start[b], end)`` — the row's own tokens — and the G query heads that share the KV head ride
along as the rows of one ``tl.dot`` (GQA without expanding the cache). The filled range of each row is
cut into ``splits`` equal parts, each a program (flash-decoding: enough programs to fill the SMs at small
batch), whose partial softmax statistics a second kernel merges. ``start`` and ``end`` are read from
device tensors, so one captured CUDA graph serves every step of a rollout (no window per cache size).

Rows are left-padded: row ``b`` holds tokens in columns ``[start[b], end)`` with ``end`` shared (the
engine's write column + 1). Under ``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run
on CPU tensors through triton's interpreter (the unit tests); :func:`reference` is the same contract in torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # cache columns per loop step


@triton.jit
def _attention_partial(Q, K, V, Start, End, Part, Lse,
             sq_b, sq_h, sq_g, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, n_kv, G, scale, S,
             BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, HD: tl.constexpr,
             PRECISION: tl.constexpr):  # fmt: skip
    bh = tl.program_id(0)
    s = tl.program_id(1)
    b = bh // n_kv
    h = bh % n_kv
    start = tl.load(Start + b).to(tl.int32)
    end = tl.load(End).to(tl.int32)
    per = tl.cdiv(tl.cdiv(end - start, S), BLOCK_N) * BLOCK_N  # whole blocks per split of this row's range
    lo = start + s * per
    hi = tl.minimum(lo + per, end)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HD)
    q = tl.load(Q + b * sq_b + h * sq_h + g[:, None] * sq_g + d[None, :], mask=g[:, None] < G, other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HD], tl.float32)
    kb = K + b * sk_b + h * sk_h
    vb = V + b * sv_b + h * sv_h
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        valid = n < hi
        k = tl.load(kb + n[:, None] * sk_n + d[None, :], mask=valid[:, None], other=0.0)  # (BLOCK_N, HD)
        # inductor hands a Python float to a kernel inside a compiled graph as fp64 (the whole-step compile):
        # cast back, or the loop-carried m_i would change type
        qk = (tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale).to(tl.float32)  # (BLOCK_G, BLOCK_N)
        qk = tl.where(valid[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # finite: every block of the loop holds a valid column
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(vb + n[:, None] * sv_n + d[None, :], mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    has = l_i > 0  # an empty split (its range starts past the row's end) leaves -inf and zeros
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    base = bh * S + s
    tl.store(Part + (base * BLOCK_G + g[:, None]) * HD + d[None, :], out)
    tl.store(Lse + base * BLOCK_G + g, lse)


@triton.jit
def _attention_combine(Part, Lse, Out, so_b, so_h, so_g, n_kv, G, S,
             BLOCK_G: tl.constexpr, HD: tl.constexpr):  # fmt: skip
    bh = tl.program_id(0)
    b = bh // n_kv
    h = bh % n_kv
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HD)
    top = tl.full([BLOCK_G], float("-inf"), tl.float32)
    for s in range(0, S):
        top = tl.maximum(top, tl.load(Lse + (bh * S + s) * BLOCK_G + g))
    acc = tl.zeros([BLOCK_G, HD], tl.float32)
    den = tl.zeros([BLOCK_G], tl.float32)
    for s in range(0, S):
        w = tl.exp(tl.load(Lse + (bh * S + s) * BLOCK_G + g) - top)  # 0 for an empty split
        acc += w[:, None] * tl.load(Part + ((bh * S + s) * BLOCK_G + g[:, None]) * HD + d[None, :])
        den += w
    out = acc / den[:, None]
    tl.store(Out + b * so_b + h * so_h + g[:, None] * so_g + d[None, :], out.to(Out.dtype.element_ty),
             mask=g[:, None] < G)  # fmt: skip


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                     scale: float, splits: int | None = None) -> torch.Tensor:  # fmt: skip
    """q (B, H_kv, G, hd) over cache columns ``[start[b], end)`` of k, v (B, H_kv, L, hd) -> (B, H_kv, G, hd).

    ``start`` (B,) and ``end`` (1,) are integer device tensors (graph-safe); every row must hold at least one
    column (``start[b] < end``). Partial results are float32; the output has q's dtype."""
    b, n_kv, g, hd = q.shape
    if k.stride(-1) != 1 or v.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("decode_attention: the head dimension must be contiguous")
    if splits is None:  # about two waves of the SMs (r1v.generation.decoder.splits_for, without the device query)
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 8
        splits = max(1, min(16, -(-2 * sms // (b * n_kv))))
    s = splits
    block_g = max(16, triton.next_power_of_2(g))  # tl.dot needs 16 rows
    part = torch.empty(b * n_kv, s, block_g, hd, dtype=torch.float32, device=q.device)
    lse = torch.empty(b * n_kv, s, block_g, dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    grid = (b * n_kv, s)
    _attention_partial[grid](q, k, v, start, end, part, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
                             k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), n_kv, g, scale, s,
                             BLOCK_G=block_g, BLOCK_N=BLOCK_N, HD=hd, num_warps=4,
                             PRECISION="ieee" if q.dtype == torch.float32 else "tf32")  # fmt: skip
    _attention_combine[(b * n_kv,)](part, lse, out, out.stride(0), out.stride(1), out.stride(2), n_kv, g, s,
                                    BLOCK_G=block_g, HD=hd, num_warps=4)  # fmt: skip
    return out


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
              scale: float) -> torch.Tensor:  # fmt: skip
    """:func:`decode_attention` in float32 torch (for tests)."""
    cols = torch.arange(k.shape[2], device=k.device)
    keep = (cols[None] >= start[:, None]) & (cols[None] < end)  # (B, L)
    s = torch.einsum("bhgd,bhnd->bhgn", q.float(), k.float()) * scale
    s = s.masked_fill(~keep[:, None, None], float("-inf"))
    return torch.einsum("bhgn,bhnd->bhgd", s.softmax(-1), v.float()).to(q.dtype)

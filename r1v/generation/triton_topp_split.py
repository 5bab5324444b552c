"""Top-p sampling in four launches with fewer sequential passes per row: the split path of the Triton sampler.

:mod:`r1v.generation.triton_topp` (the single-program kernel, kept as ``split=False``) runs one program per
row and each of its sequential passes over the row costs one SM's L2 latency (≈ 30-35 µs at V = 151,936 on
an H100): with broad logits ≈ 11 of them (max, Z, ~7 halvings, the listing, the draw), while at B = 64 half
the SMs idle. Here, with the same ``s = logit * (1/T)``, ``e = exp(s − max)``, rule and key search:

1. ``_chunk_stats`` over a (B, C) grid: per chunk of the row its max ``m_c`` and ``Z_c = Σ exp(s − m_c)``.
2. ``_search`` per row: merges them (``m = max m_c``, ``Z = Σ Z_c·exp(m_c − m)``, replacing two sequential
   passes; this ``Z`` is "the" Z of the rule for the whole kernel) and runs the search of the single-program
   kernel, except that each full-row pass splits ``(lo, hi]`` in ``WAYS`` = 4 (three interior points: their
   masses and the counts below them), two bits a pass instead of one; then the same listing and register
   phase, with up to ``SPLIT_CAP`` = 8192 candidates. (Each element costs ``WAYS`` compares and adds in one
   SM: more ways may turn a pass compute-bound; ``benchmarks/topp_kernel.py --sweep`` times them.)
3. ``_race`` over a (B, C) grid: per chunk the best ``e / E`` over kept tokens and its lowest index.
4. ``_pick`` per row: the best chunk, the lowest index on ties (chunks are in row order) — the token is the
   ``argmax`` with ties to the lowest index, as in the single-program kernel.

Given the same noise, both paths keep ``{s > thr}`` and draw the same token, except where a float rounding of
``Z`` or of a mass decides the threshold (the mass above a token within ~1e-6 of ``p·Z``). Everything is a
fixed-order reduction with no host sync (CUDA-graph capturable, deterministic given the noise). The stats
count sequential full-row passes: the parallel pre-pass and the parallel draw count one each. At B = 64,
V = 151,936 with broad logits: 11 for the single-program kernel, 6 here (tests/unit/test_triton_topp.py).
Not yet timed on a GPU: ``python benchmarks/topp_kernel.py`` prints both paths side by side.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_topp import _KEY_NEG_INF, BLOCK, CAP, NUM_WARPS, _check, _key, _launch, _refine, _row, _unkey

CHUNKS = 8  # chunks per row of the parallel passes: B = 64 rows x 8 = 512 programs over an H100's 132 SMs
PART_BLOCK = 2048  # elements per loop step of the parallel passes
PART_WARPS = 8
WAYS = 4  # 2 bits a search pass; each element costs WAYS compares and adds, in one SM
# the search passes hold (WAYS, step) mass and count accumulators: ptxas (sm_90, 16 warps) fits WAYS x step ≤ 16384
# in registers (124 of 128 at 4 x 4096) and spills above, so the step defaults to SEARCH_ELEMS // WAYS
SEARCH_ELEMS = 16384
# candidates of the register phase: twice the single-program kernel's CAP, so broad rows list theirs one search pass
# sooner (11 -> 6 sequential passes at V = 151,936, not 7); ptxas fits it (126 registers, no spills on sm_90) and
# the register halvings only reduce 16 instead of 8 values a thread
SPLIT_CAP = 8192


@triton.jit
def _chunk_stats(logits_ptr, temp_ptr, m_ptr, z_ptr, V, stride_l, CHUNK, NC, BLOCK: tl.constexpr):
    """Program (row, c): max of s over chunk c and Σ exp(s − that max) (0 for an all ``-inf`` chunk)."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    lrow = logits_ptr + row * stride_l
    inv_t = 1.0 / tl.load(temp_ptr + row)
    offs = tl.arange(0, BLOCK)
    first = c * CHUNK
    mx = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(first, first + CHUNK, BLOCK):
        mx = tl.maximum(mx, _row(lrow, start + offs, V, inv_t))
    mc = tl.max(mx, 0)
    shift = tl.where(mc == float("-inf"), 0.0, mc)  # exp(-inf - 0) = 0, not exp(-inf + inf) = nan
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(first, first + CHUNK, BLOCK):
        acc += tl.exp(_row(lrow, start + offs, V, inv_t) - shift)
    tl.store(m_ptr + row * NC + c, mc)
    tl.store(z_ptr + row * NC + c, tl.sum(acc, 0))


@triton.jit
def _merged_max(m_ptr, row, NC, NCP: tl.constexpr):
    """The row's max of s from its chunks' maxima (exact: a max does not round)."""
    c = tl.arange(0, NCP)
    return tl.max(tl.load(m_ptr + row * NC + c, mask=c < NC, other=float("-inf")), 0)


@triton.jit
def _search(
    logits_ptr,  # (B, V) float32, unit stride along V
    temp_ptr,  # (B,) float32
    top_p_ptr,  # (B,) float32
    m_ptr,  # (B, NC) float32: chunk maxima of s
    z_ptr,  # (B, NC) float32: Σ exp(s − chunk max) per chunk
    cand_ptr,  # (B, CAP) float32 scratch: s of the tokens in (lo, hi]
    thr_ptr,  # (B,) float32 out: kept iff logit * (1/T) > thr
    stats_ptr,  # (B, 2) int32 out: sequential full-row passes; 2 if the register phase ran, else 0
    V,
    stride_l,
    NC,
    NCP: tl.constexpr,  # next power of two ≥ NC
    BLOCK: tl.constexpr,  # loop step of the listing pass
    SBLOCK: tl.constexpr,  # loop step of the WAYS-way passes
    WAYS: tl.constexpr,  # sub-intervals per search pass (a power of two): log2(WAYS) bits a pass
    CAP: tl.constexpr,
    DRAW: tl.constexpr,  # only for the pass count: the race kernels follow
):
    row = tl.program_id(0).to(tl.int64)
    lrow = logits_ptr + row * stride_l
    inv_t = 1.0 / tl.load(temp_ptr + row)
    p = tl.load(top_p_ptr + row)
    neg_inf = float("-inf")

    # 1-2. the chunks' (max, Z) merged: one parallel pass instead of two sequential ones
    ch = tl.arange(0, NCP)
    mc = tl.load(m_ptr + row * NC + ch, mask=ch < NC, other=neg_inf)
    zc = tl.load(z_ptr + row * NC + ch, mask=ch < NC, other=0.0)
    m = tl.max(mc, 0)
    z = tl.sum(zc * tl.exp(mc - m), 0)  # an all -inf chunk: 0 * exp(-inf) = 0
    goal = p * z

    full = p >= 1.0  # keep everything: no search
    lo = tl.where(full, _KEY_NEG_INF, _key(m + tl.log(tl.maximum(1.0 - p, 1e-30) * z / (2.0 * V))).to(tl.int64))
    hi = tl.where(full, _KEY_NEG_INF + 1, _key(m).to(tl.int64))
    base = z * 0.0  # f(hi): the mass strictly above float(hi)
    n = V  # tokens in (lo, hi] (an upper bound until the first pass)
    passes = tl.full([], 1, tl.int32)
    mode = tl.zeros([], tl.int32)

    # 3. WAYS-way splits over the full row until the candidates (lo, hi] fit in registers: per pass the mass
    # above WAYS - 1 interior points t_1 < ... and the tokens in (lo, t_k], held as (WAYS, SBLOCK) accumulators
    # (names differ from the later phase's: compiled Triton wants one type per name across loops and branches)
    k = tl.arange(0, WAYS) + 1  # t_k for k = 1..WAYS, t_WAYS = hi
    soffs = tl.arange(0, SBLOCK)
    while (hi - lo > 1) & (n > CAP):
        lo_f = _unkey(lo)
        w = _unkey(hi) - lo_f
        vt = _key(lo_f + (k.to(tl.float32) / WAYS) * w).to(tl.int64)  # value points while the interval is wide
        t = tl.where(w > 1e-3, vt, lo + (hi - lo) * k // WAYS)  # key points after
        t = tl.where(k == WAYS, hi, tl.minimum(tl.maximum(t, lo + 1), hi - 1))
        t_f = _unkey(t)[:, None]  # (WAYS, 1)
        mass = tl.zeros([WAYS, SBLOCK], tl.float32)
        ncnt = tl.zeros([WAYS, SBLOCK], tl.int32)
        for start in range(0, V, SBLOCK):
            s = _row(lrow, start + soffs, V, inv_t)[None, :]  # (1, SBLOCK)
            above = s > t_f
            mass += tl.where(above, tl.exp(s - m), 0.0)
            ncnt += ((s > lo_f) & ~above).to(tl.int32)
        f = tl.sum(mass, 1)  # (WAYS,) f(t_k)
        nk = tl.sum(ncnt, 1)  # (WAYS,) tokens in (lo, t_k]
        # the first point whose mass is below the goal closes the interval, the one before opens it (f(hi) <
        # goal already: the last point is always below; its mass stays ``base`` as found)
        j = tl.min(tl.where((f < goal) | (k == WAYS), k, WAYS), 0)
        prev = k == j - 1
        lo = tl.where(j == 1, lo, tl.sum(tl.where(prev, t, 0), 0))
        hi = tl.sum(tl.where(k == j, t, 0), 0)
        base = tl.where(j == WAYS, base, tl.sum(tl.where(k == j, f, 0.0), 0))
        n = tl.sum(tl.where(k == j, nk, 0), 0) - tl.sum(tl.where(prev, nk, 0), 0)
        passes += 1

    if hi - lo > 1:
        # 4. the ≤ CAP candidates (lo, hi] to scratch (row order), then the remaining halvings in registers
        lo = _refine(lrow, cand_ptr + row * CAP, V, inv_t, lo, hi, base, goal, m, BLOCK, CAP)
        passes += 1
        mode = tl.full([], 2, tl.int32)

    tl.store(thr_ptr + row, _unkey(lo))
    if DRAW:
        passes += 1  # the parallel race
    tl.store(stats_ptr + 2 * row, passes)
    tl.store(stats_ptr + 2 * row + 1, mode)


@triton.jit
def _race(logits_ptr, noise_ptr, temp_ptr, m_ptr, thr_ptr, best_ptr, idx_ptr, V, stride_l, stride_n, CHUNK, NC,
          NCP: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """Program (row, c): the best ``e / E`` over chunk c's kept tokens (-1 if none) and its lowest index."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    lrow = logits_ptr + row * stride_l
    nrow = noise_ptr + row * stride_n
    inv_t = 1.0 / tl.load(temp_ptr + row)
    m = _merged_max(m_ptr, row, NC, NCP)
    thr = tl.load(thr_ptr + row)
    offs = tl.arange(0, BLOCK)
    first = c * CHUNK
    best = tl.full([BLOCK], -1.0, tl.float32)
    bidx = tl.zeros([BLOCK], tl.int32)
    for start in range(first, first + CHUNK, BLOCK):
        o = start + offs
        s = _row(lrow, o, V, inv_t)
        kept = s > thr
        noise = tl.load(nrow + o, mask=kept, other=1.0)  # read only where kept
        r = tl.where(kept, tl.exp(s - m) / noise, -1.0)
        upd = r > best  # strict: a lane keeps its earlier index on ties
        best = tl.where(upd, r, best)
        bidx = tl.where(upd, o, bidx)
    top = tl.max(best, 0)
    tl.store(best_ptr + row * NC + c, top)
    tl.store(idx_ptr + row * NC + c, tl.min(tl.where(best == top, bidx, V), 0))


@triton.jit
def _pick(best_ptr, idx_ptr, token_ptr, NC, NCP: tl.constexpr):
    """Program row: the token of the best chunk, the lowest index on ties."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, NCP)
    best = tl.load(best_ptr + row * NC + c, mask=c < NC, other=-2.0)
    idx = tl.load(idx_ptr + row * NC + c, mask=c < NC, other=2147483647)
    tok = tl.min(tl.where(best == tl.max(best, 0), idx, 2147483647), 0)
    tl.store(token_ptr + row, tok.to(tl.int64))


def _launch_split(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, noise: torch.Tensor | None,
                  block: int = BLOCK, cap: int = SPLIT_CAP, chunks: int = CHUNKS, search_block: int | None = None,
                  part_block: int = PART_BLOCK, ways: int = WAYS,
                  num_warps: int = NUM_WARPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The four launches -> ((B,) int64 tokens (undefined without noise), (B,) float32 thresholds, (B, 2) int32
    stats: sequential full-row passes, and 2 where the (lo, hi] list and the register phase ran, else 0)."""
    _check(logits, temperature, top_p)
    if ways < 2 or ways & (ways - 1):
        raise ValueError(f"triton top-p: ways must be a power of two ≥ 2, got {ways}")
    b, v = logits.shape
    dev = logits.device
    temperature = temperature.to(torch.float32).contiguous()
    top_p = top_p.to(torch.float32).contiguous()
    tokens = torch.empty(b, dtype=torch.int64, device=dev)
    thr = torch.empty(b, dtype=torch.float32, device=dev)
    stats = torch.empty(b, 2, dtype=torch.int32, device=dev)
    if b == 0:
        return tokens, thr, stats
    pblock = min(part_block, triton.next_power_of_2(triton.cdiv(v, chunks)))
    chunk = triton.cdiv(triton.cdiv(v, chunks), pblock) * pblock  # whole loop steps per chunk
    nc = triton.cdiv(v, chunk)
    ncp = triton.next_power_of_2(nc)
    m = torch.empty(b, nc, dtype=torch.float32, device=dev)  # (B, NC) scratch, reused by the race
    z = torch.empty(b, nc, dtype=torch.float32, device=dev)
    cand = torch.empty(b, cap, dtype=torch.float32, device=dev)  # (B, CAP) scratch
    _chunk_stats[(b, nc)](logits, temperature, m, z, v, logits.stride(0), chunk, nc, BLOCK=pblock,
                          num_warps=PART_WARPS)  # fmt: skip
    draw = noise is not None
    sblock = min(search_block or SEARCH_ELEMS // ways, triton.next_power_of_2(v))
    _search[(b,)](logits, temperature, top_p, m, z, cand, thr, stats, v, logits.stride(0), nc, NCP=ncp,
                  BLOCK=min(block, triton.next_power_of_2(v)), SBLOCK=sblock,
                  WAYS=ways, CAP=cap, DRAW=draw, num_warps=num_warps)  # fmt: skip
    if draw:
        best = torch.empty(b, nc, dtype=torch.float32, device=dev)
        idx = torch.empty(b, nc, dtype=torch.int32, device=dev)
        _race[(b, nc)](logits, noise, temperature, m, thr, best, idx, v, logits.stride(0), noise.stride(0), chunk,
                       nc, NCP=ncp, BLOCK=pblock, num_warps=PART_WARPS)  # fmt: skip
        _pick[(b,)](best, idx, tokens, nc, NCP=ncp, num_warps=1)
    return tokens, thr, stats


def _check_noise(logits: torch.Tensor, noise: torch.Tensor) -> None:
    if noise.shape != logits.shape or noise.dtype != torch.float32 or noise.stride(-1) != 1:
        raise ValueError("triton top-p: noise must be float32 of the logits' shape with unit stride")


def top_p_sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, noise: torch.Tensor,
                 split: bool = True, block: int = BLOCK, cap: int | None = None) -> torch.Tensor:  # fmt: skip
    """(B, V) float32 logits, (B,) temperatures, (B,) top-p, (B, V) Exp(1) noise -> (B,) int64 tokens.

    The token is ``argmax`` over the row's nucleus of ``exp(logit/T − max) / noise`` (ties to the lowest
    index), as :func:`r1v.generation.triton_topp.top_p_sample` draws it; ``split=False`` runs that
    single-program kernel. No host synchronisation (CUDA-graph capturable), deterministic given the noise.
    """
    _check_noise(logits, noise)
    launch = _launch_split if split else _launch
    return launch(logits, temperature, top_p, noise, block=block, cap=cap or (SPLIT_CAP if split else CAP))[0]


def top_p_threshold(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, split: bool = True,
                    block: int = BLOCK, cap: int | None = None) -> torch.Tensor:  # fmt: skip
    """(B,) float32 thresholds: token i of row b is kept iff ``logits[b, i] * (1/T[b]) > thr[b]``; ``-inf``
    where ``top_p ≥ 1``. ``split=False``: the single-program kernel's."""
    launch = _launch_split if split else _launch
    return launch(logits, temperature, top_p, None, block=block, cap=cap or (SPLIT_CAP if split else CAP))[1]

"""``rollout=static``: a static-KV-cache decode loop, one CUDA graph per attention window, GPU sampling.

Where transformers' ``generate`` loses its time (H200, 1.5B, batch 64: 85 ms per step against a ~1 ms
bandwidth floor) is Python and kernel launches, not arithmetic. Here one decode step — embed, every
layer, LM head, penalty/temperature/top-p/draw, EOS bookkeeping — is captured once as a CUDA graph and
replayed; the host only replays and, every ``check_every`` steps, asks whether every row has ended.

The cache holds ``capacity = P + max_new_tokens`` columns (rounded up to ``window``); column ``j`` of
row ``b`` is the j-th token of the left-padded row. A step attends to columns ``[0, w)`` for the
smallest multiple ``w`` of ``window`` that covers the current token, so early steps do not read the
empty end of the cache (one graph per window size, captured on first use and reused while the
weights' storage, the batch shape and the sampling mode stay the same).

Prefill (the prompt, image embeddings spliced by the model's ``embed``) runs eagerly with a causal +
padding mask, writing the cache's first P columns; positions count real tokens only, as in ``generate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from r1v.data.audio import audio_inputs

from .decoder import Decoder, head_dim_ok
from .sampling import TOP_P_METHODS, Knobs, draw, resolve_top_p_method, triton_available

PER_SAMPLE_KNOBS = ("repetition_penalty", "temperature", "top_p")
ATTENTION = ("auto", "sdpa", "triton")  # decode attention: masked SDPA over windows, or the split-K kernel
COMPILE_MODES = ("default", "max-autotune")  # torch.compile's mode
COMPILE_SCOPES = ("layer", "step")  # compile the per-layer functions, or the whole decode step as one graph
_FUSE_MARGIN = 2 << 30  # bytes of GPU memory the fused copies leave free beside the weights and the KV cache
_PREFILL_MASK_ELEMENTS = 1 << 28  # rows per prefill chunk keep the (rows, 1, P, P) mask under 256M entries
_PREFILL_TOKENS = 1 << 15  # and the chunk's activations bounded (32B, P = 2k: gate|up of 32k tokens is 3.6 GB)


@dataclass
class _State:
    """Device buffers a captured step reads and writes (their addresses are baked into the graphs)."""

    batch: int
    capacity: int
    # one (B, H_kv, capacity, hd) tensor per layer, each its own allocation: inside a whole-step compiled graph a
    # K/V write into a view of one stacked cache was functionalised into a copy of the whole cache per layer
    # (91 ms per step on an H100, PERF_NOTES); writes into separate graph inputs stay in place
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    tok: torch.Tensor  # (B,) the last chosen token, input of the next step
    col: torch.Tensor  # (1,) cache column the input token is written to
    pos: torch.Tensor  # (B,) its RoPE position (real tokens before it)
    t: torch.Tensor  # (1,) output index of the token being chosen
    pad: torch.Tensor  # (B,) left-padding width
    done: torch.Tensor  # (B,) bool
    out: torch.Tensor  # (B, max_new)
    seen: torch.Tensor  # (B, V) bool, generated tokens (repetition penalty)
    knobs: Knobs
    suppress: torch.Tensor | None = None  # (S,) token ids never chosen; replaced only together with the graphs
    graphs: dict[tuple, Any] = field(default_factory=dict)
    pool: Any = None
    key: tuple = ()


class StaticEngine:
    """Rollout engine with a static KV cache; CUDA graphs on the GPU, the same loop eagerly on the CPU.

    It reads whole weight tensors (``needs_whole_weights``): under ZeRO-3 the model must be gathered for it
    (:func:`r1v.runtime.weights.decode_ready` with ``gather="whole"``).

    Sampling knobs may differ per sample (``sample_params``: repetition_penalty, temperature, top_p).
    ``max_batch_size`` splits a large rollout batch (the cache is B × capacity × layers × KV width).
    ``top_p_method``: ``auto`` (``triton`` on CUDA where triton imports, else ``sort``), ``sort``, ``bisect`` or
    ``triton`` (one-launch kernel, CUDA only; r1v/generation/sampling.py).
    """

    name = "static"  # the registry name, for messages
    needs_whole_weights = True

    def __init__(self, temperature: float = 0.6, top_p: float = 0.95, repetition_penalty: float = 1.0,
                 cuda_graphs: bool = True, compile: bool = False, window: int = 128,
                 max_batch_size: int | None = None, check_every: int = 16, fuse: bool = False,
                 top_p_method: str = "auto", attention: str = "auto", compile_mode: str = "default",
                 split_k: bool = False, compile_scope: str = "layer") -> None:  # fmt: skip
        checks = (("temperature", temperature, temperature > 0), ("top_p", top_p, 0 < top_p <= 1),
                  ("repetition_penalty", repetition_penalty, repetition_penalty > 0), ("window", window, window >= 1),
                  ("check_every", check_every, check_every >= 1),
                  ("max_batch_size", max_batch_size, max_batch_size is None or max_batch_size >= 1))  # fmt: skip
        for name, value, ok in checks:
            if not ok:
                raise ValueError(f"rollout 'static': {name}={value} is out of range")
        if top_p_method not in TOP_P_METHODS:
            raise ValueError(f"rollout 'static': top_p_method '{top_p_method}' is not one of "
                             f"{', '.join(TOP_P_METHODS)}")  # fmt: skip
        if top_p_method in ("triton", "triton_split") and not triton_available():
            raise ValueError(f"rollout 'static': top_p_method '{top_p_method}' needs triton, which does not import "
                             "here")  # fmt: skip
        self.top_p_method = top_p_method
        if attention not in ATTENTION:
            raise ValueError(f"rollout 'static': attention '{attention}' is not one of {', '.join(ATTENTION)}")
        if attention == "triton" and not triton_available():
            raise ValueError("rollout 'static': attention 'triton' needs triton, which does not import here")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"rollout 'static': compile_mode '{compile_mode}' is not one of "
                             f"{', '.join(COMPILE_MODES)}")  # fmt: skip
        if compile_scope not in COMPILE_SCOPES:
            raise ValueError(f"rollout 'static': compile_scope '{compile_scope}' is not one of "
                             f"{', '.join(COMPILE_SCOPES)}")  # fmt: skip
        self.attention, self.compile_mode, self.split_k = attention, compile_mode, split_k
        self.compile_scope = compile_scope
        # the sampler stays eager inside the graph: inductor (torch 2.11) fails to generate Triton code for the
        # bisection's masked reductions over a 152k vocabulary ("get_block_shape"), found on the H200
        self._draw = draw
        self.temperature, self.top_p, self.repetition_penalty = temperature, top_p, repetition_penalty
        self.cuda_graphs, self.compile, self.window = cuda_graphs, compile, window
        self.max_batch_size, self.check_every, self.fuse = max_batch_size, check_every, fuse
        self._state: _State | None = None
        self._decoder: Decoder | None = None

    # -- the rollout-engine interface ------------------------------------------------------------
    def generate(self, model: Any, processor: Any, samples: list[Any], max_new_tokens: int, greedy: bool = False,
                 sample_params: Sequence[Mapping[str, float]] | None = None) -> list[str]:  # fmt: skip
        """Completions for ``samples``; ``sample_params[i]`` may set sample i's knobs."""
        ids = self.generate_ids(model, processor, samples, max_new_tokens, greedy, sample_params)
        return [processor.decode_completion(row) for row in ids]

    @torch.no_grad()
    def generate_ids(self, model: Any, processor: Any, samples: list[Any], max_new_tokens: int, greedy: bool = False,
                     sample_params: Sequence[Mapping[str, float]] | None = None,
                     on_token: Callable[[list[int]], None] | None = None) -> list[list[int]]:  # fmt: skip
        """Completion token ids per sample: up to and including EOS (no EOS when cut at the budget).
        ``on_token(tokens)`` is called with each step's new token per row as it is chosen (streaming)."""
        knobs = self._knobs(len(samples), sample_params)
        step = self.max_batch_size or len(samples)
        tok = processor.tokenizer
        device = next(model.parameters()).device
        rows: list[list[int]] = []
        # The engine computes in the weights' own dtype, whatever autocast a caller's precision plugin has on
        # (Lightning's bf16-mixed around validation and training steps): its KV cache has that dtype, and
        # autocast would hand it bf16 K/V from fp32 weights (index_copy_ refused the mix on the H100).
        with torch.autocast(device.type, enabled=False):
            for start in range(0, len(samples), step):
                part = samples[start : start + step]
                batch = processor.collate([processor.encode(s, target=None) for s in part], padding_side="left")
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                pixels = None if batch["pixel_values"] is None else batch["pixel_values"].to(device)
                audio = {k: v.to(device) for k, v in audio_inputs(batch).items()}  # {} without audio
                embeds = model.embed(ids, pixels, **audio)  # (B, P, D), image (and audio) tokens spliced
                rows += self.decode(model.backbone, embeds, mask, max_new_tokens, greedy,
                                    {k: v[start : start + step] for k, v in knobs.items()},
                                    eos=tok.eos_token_id, pad=tok.pad_token_id, on_token=on_token,
                                    suppress=getattr(model, "never_generated", ()))  # fmt: skip
        if self._decoder is not None:
            self._decoder.release_merged()  # LoRA's merged weights live for a rollout only
        return rows

    def _knobs(self, n: int, sample_params: Sequence[Mapping[str, float]] | None) -> dict[str, list[float]]:
        out = {"temperature": [self.temperature] * n, "top_p": [self.top_p] * n,
               "repetition_penalty": [self.repetition_penalty] * n}  # fmt: skip
        if sample_params is None:
            return out
        if len(sample_params) != n:
            raise ValueError(f"sample_params has {len(sample_params)} entries for {n} samples")
        unknown = sorted({k for p in sample_params for k in p} - set(PER_SAMPLE_KNOBS))
        if unknown:
            raise ValueError(f"rollout 'static' cannot set '{unknown[0]}' per sample (it can: "
                             f"{', '.join(PER_SAMPLE_KNOBS)})")  # fmt: skip
        for i, p in enumerate(sample_params):
            for k, v in p.items():
                out[k][i] = float(v)
        return out

    # -- decoding --------------------------------------------------------------------------------
    def decoder(self, lm: torch.nn.Module, cache_bytes: int = 0) -> Decoder:
        """The functional view of ``lm`` (kept per model so compiled kernels are reused). ``cache_bytes``: the
        KV cache this rollout still has to allocate (the fused weight copies leave room for it)."""
        if self._decoder is None or self._decoder.lm is not lm:
            device = next(lm.parameters()).device
            on_gpu = device.type == "cuda"
            budget = None
            if self.fuse and on_gpu:  # a second copy of q|k|v and gate|up: only as much as fits
                free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
                free -= torch.cuda.memory_allocated(device)
                cfg = lm.config  # room for a prefill chunk's activations (q|k|v, gate|up, SwiGLU, residuals)
                chunk = _PREFILL_TOKENS * (3 * cfg.intermediate_size + 4 * cfg.hidden_size) * 4
                budget = max(0, free - cache_bytes - chunk - _FUSE_MARGIN)
            # compile on the GPU only: on the CPU inductor builds C++ (slow, needs a compiler) for little gain
            mode = None if self.compile_mode == "default" else "max-autotune-no-cudagraphs"  # our graphs wrap it
            self._decoder = Decoder(lm, compile=self.compile and on_gpu, fuse=self.fuse, compile_mode=mode,
                                    attention=self._attention(lm, device), fuse_budget=budget, split_k=self.split_k,
                                    compile_scope=self.compile_scope)  # fmt: skip
        else:  # same model: re-read the tensors (a ZeRO-3 gather gives new storage every rollout)
            self._decoder.collect()
        return self._decoder

    def _attention(self, lm: torch.nn.Module, device: torch.device) -> str:
        """``auto`` -> ``triton`` on CUDA where triton imports and the head size suits the kernel, else ``sdpa``."""
        if self.attention != "auto":
            return self.attention
        cfg = lm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return "triton" if device.type == "cuda" and triton_available() and head_dim_ok(head_dim) else "sdpa"

    @torch.no_grad()
    def decode(self, lm: torch.nn.Module, embeds: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, greedy: bool,
               knobs: Mapping[str, list[float]], eos: int | None, pad: int,
               on_token: Callable[[list[int]], None] | None = None,
               suppress: Sequence[int] = ()) -> list[list[int]]:  # fmt: skip
        """Left-padded prompt embeddings (B, P, D) with mask (B, P) -> completion ids per row.

        ``eos=None`` never stops early (benchmarks). Rows are cut after their first EOS. ``on_token`` gets
        each step's tokens (one per row; ``pad`` for rows already ended) and costs a host sync per step.
        Tokens in ``suppress`` are never chosen (the VLM's ``never_generated``: its image placeholder).
        """
        b, p = mask.shape
        dev = embeds.device
        graphs = self.cuda_graphs and dev.type == "cuda"
        need = p + max_new_tokens
        capacity = math.ceil(need / self.window) * self.window if graphs else need
        dec = self.decoder(lm, self._cache_bytes(lm, b, capacity))
        st = self._buffers(dec, b, capacity, max_new_tokens, dev)
        kb = Knobs.build(knobs["temperature"], knobs["top_p"], knobs["repetition_penalty"], dev)
        mode = (greedy, kb.top_p is not None, kb.penalty is not None, eos, pad, tuple(suppress))
        for name in ("temperature", "top_p", "penalty"):  # values into the captured buffers
            src = getattr(kb, name)
            if src is not None:
                getattr(st.knobs, name).copy_(src)
        knobs_live = Knobs(st.knobs.temperature, st.knobs.top_p if mode[1] else None,
                           st.knobs.penalty if mode[2] else None)  # fmt: skip
        # Every tensor a captured step reads outside its own pool is either a state buffer (filled in place, it
        # lives as long as the graphs) or one of the model's tensors, whose addresses are the key: a replay
        # must never read a tensor made for an earlier call (freed memory, garbage indices on the GPU).
        key = (dec.fingerprint(), mode)
        if st.key != key:
            # stale: other weights' storage (a ZeRO-3 gather, rebuilt fused buffers) or another sampling mode. The
            # old graphs go with their memory pool: capturing into a pool whose graphs were all destroyed trips
            # the allocator.
            st.graphs.clear()
            st.pool = None
            st.key = key
            st.suppress = torch.tensor(list(suppress), dtype=torch.long, device=dev) if suppress else None

        real = mask.sum(1)
        st.pad.copy_(p - real)
        h_last = self._prefill(dec, st, embeds, mask)  # (B, D)
        first = self._choose(dec.logits(h_last), knobs_live, greedy, st.seen if mode[2] else None, st.suppress)
        st.out.fill_(pad)
        st.out[:, 0] = first
        st.tok.copy_(first)
        st.done.copy_(first == eos if eos is not None else torch.zeros_like(st.done))
        if mode[2]:
            st.seen.zero_()
            st.seen.scatter_(1, first[:, None], True)
        st.col.fill_(p)
        st.pos.copy_(real)
        st.t.fill_(1)
        if on_token is not None:
            on_token(first.tolist())

        for t in range(1, max_new_tokens):
            col = p + t - 1  # where the input token's K/V go
            if graphs:  # the split-K kernel reads the filled columns itself: one graph for every step
                w = st.capacity if dec.attention == "triton" else min(math.ceil((col + 1) / self.window) * self.window,
                                                                      st.capacity)  # fmt: skip
                self._graph(dec, st, w, knobs_live, greedy, eos, pad).replay()
            else:
                self._step(dec, st, col + 1, knobs_live, greedy, eos, pad)
            if on_token is not None:
                on_token(st.tok.tolist())
            if eos is not None and (not graphs or on_token or t % self.check_every == 0) and bool(st.done.all()):
                break
        out = st.out[:b, :max_new_tokens].tolist()  # the buffer may be wider (kept from a longer rollout)
        return [row[: row.index(eos) + 1] if eos is not None and eos in row else row for row in out]

    def _choose(self, logits: torch.Tensor, knobs: Knobs, greedy: bool, seen: torch.Tensor | None,
                suppress: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """(B, V) logits -> (B,) tokens, with ``auto`` top-p resolved by :func:`resolve_top_p_method` (the torch
        bisection's 32 unfused halvings cost more than the sort on the H200: 6.23 vs 4.28 ms per step).
        ``suppress`` is the state's (S,) index buffer, never a tensor made for one call (a graph bakes it in)."""
        method = resolve_top_p_method(self.top_p_method, logits.device)
        if suppress is not None:
            logits = logits.index_fill(1, suppress, float("-inf"))
        return self._draw(logits, seen, knobs.penalty if seen is not None else None, knobs.temperature, knobs.top_p,
                          greedy, method)  # fmt: skip

    def _cache_bytes(self, lm: torch.nn.Module, b: int, capacity: int) -> int:
        """Bytes of the K and V caches a decode of ``b`` rows x ``capacity`` columns allocates (0: already held)."""
        st, cfg = self._state, lm.config
        if st is not None and st.batch == b and st.capacity >= capacity:
            return 0
        n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        item = next(lm.parameters()).element_size()
        return 2 * cfg.num_hidden_layers * b * n_kv * capacity * head_dim * item

    def _buffers(self, dec: Decoder, b: int, capacity: int, max_new: int, dev: torch.device) -> _State:
        st = self._state
        if (st is not None and st.batch == b and st.capacity >= capacity and st.out.shape[1] >= max_new
                and st.k[0].device == dev and st.k[0].dtype == dec.dtype and len(st.k) == len(dec.layers)
                and st.k[0].shape[1] == dec.n_kv and st.k[0].shape[3] == dec.head_dim):  # fmt: skip
            return st
        self._state = None  # free the old cache and graphs before allocating the new ones
        shape = (b, dec.n_kv, capacity, dec.head_dim)  # per layer
        layers = range(len(dec.layers))
        long = {"dtype": torch.long, "device": dev}
        ones = torch.ones(b, device=dev)
        cache = {"dtype": dec.dtype, "device": dev}
        self._state = _State(
            b, capacity, [torch.zeros(shape, **cache) for _ in layers], [torch.zeros(shape, **cache) for _ in layers],
            torch.zeros(b, **long), torch.zeros(1, **long), torch.zeros(b, **long), torch.zeros(1, **long),
            torch.zeros(b, **long), torch.zeros(b, dtype=torch.bool, device=dev), torch.zeros(b, max_new, **long),
            torch.zeros(b, dec.vocab, dtype=torch.bool, device=dev), Knobs(ones.clone(), ones.clone(), ones.clone()),
        )  # fmt: skip
        return self._state

    def _prefill(self, dec: Decoder, st: _State, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Prompt pass in row chunks: cache columns [0, P) and each row's last hidden state."""
        b, p = mask.shape
        rows = max(1, min(_PREFILL_MASK_ELEMENTS // (p * p), _PREFILL_TOKENS // p))
        j = torch.arange(p, device=mask.device)
        last = []
        for r0 in range(0, b, rows):
            m = mask[r0 : r0 + rows].bool()  # (r, P)
            positions = (m.long().cumsum(-1) - 1).clamp(min=0)
            cos, sin = dec.rope(positions, embeds)
            causal = j[None, :] <= j[:, None]  # (P, P) query i sees key j <= i
            allowed = causal[None] & (m[:, None, :] | torch.eye(p, dtype=torch.bool, device=m.device)[None])
            ck, cv = [k[r0 : r0 + rows] for k in st.k], [v[r0 : r0 + rows] for v in st.v]
            h = dec.forward(embeds[r0 : r0 + rows], cos, sin, ck, cv, slice(0, p), p, allowed[:, None])
            last.append(h)
        return torch.cat(last)  # (B, D)

    def _step(self, dec: Decoder, st: _State, window: int, knobs: Knobs, greedy: bool, eos: int | None,
              pad: int) -> None:  # fmt: skip
        """Choose token ``t`` from token ``t-1`` (all state in device buffers: graph-capturable)."""
        h = dec.embed(st.tok)[:, None]  # (B, 1, D)
        cos, sin = dec.rope(st.pos[:, None], h)
        if dec.attention == "triton":  # row b's tokens are cache columns [pad[b], col]
            h = dec.forward(h, cos, sin, st.k, st.v, st.col, window, None, (st.pad, st.col + 1))
        else:
            cols = torch.arange(window, device=h.device)
            allowed = (cols[None] >= st.pad[:, None]) & (cols[None] <= st.col)  # (B, W)
            # an additive float mask built once per step: a bool mask is converted inside SDPA in every layer
            bias = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device).masked_fill_(~allowed, float("-inf"))
            h = dec.forward(h, cos, sin, st.k, st.v, st.col, window, bias[:, None, None])
        nxt = self._choose(dec.logits(h), knobs, greedy, st.seen if knobs.penalty is not None else None, st.suppress)
        nxt = torch.where(st.done, torch.full_like(nxt, pad), nxt)
        st.out.index_copy_(1, st.t, nxt[:, None])
        if eos is not None:
            st.done |= nxt == eos
        if knobs.penalty is not None:
            st.seen.scatter_(1, nxt[:, None], True)
        st.tok.copy_(nxt)
        st.col.add_(1)
        st.pos.add_(1)
        st.t.add_(1)

    def _graph(self, dec: Decoder, st: _State, window: int, knobs: Knobs, greedy: bool, eos: int | None,
               pad: int) -> torch.cuda.CUDAGraph:  # fmt: skip
        """The captured step for ``window`` (warm-up and capture leave the state as they found it)."""
        graph = st.graphs.get(window)
        if graph is not None:
            return graph
        saved = {name: getattr(st, name).clone() for name in ("tok", "col", "pos", "t", "done", "out", "seen")}
        rng = torch.cuda.get_rng_state()  # warm-up draws must not shift the seeded sequence of the real steps
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy inits and compilation happen outside the capture
            for _ in range(2):
                self._step(dec, st, window, knobs, greedy, eos, pad)
                for name, value in saved.items():
                    getattr(st, name).copy_(value)
        torch.cuda.current_stream().wait_stream(side)
        if st.pool is None:
            st.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=st.pool):
            self._step(dec, st, window, knobs, greedy, eos, pad)
        for name, value in saved.items():  # capture records without running, but be safe
            getattr(st, name).copy_(value)
        torch.cuda.set_rng_state(rng)
        st.graphs[window] = graph
        return graph

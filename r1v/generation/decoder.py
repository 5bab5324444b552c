"""A functional forward of Llama/Qwen2-style decoders over a static KV cache.

transformers' ``generate`` runs its decode step as a few hundred small kernel launches driven from
Python (plus cache bookkeeping); for a 1.5B model at batch 64 that is ~85 ms per step against a ~1 ms
memory-bandwidth floor. This module re-states the decoder as plain tensor functions over the HF
model's *own* weight tensors (no copy: a trained or ZeRO-3-gathered model is used as it is), so that
one decode step can be captured in a CUDA graph and its pointwise parts fused by ``torch.compile``.

Supported: every model whose decoder layer is Llama's — RMSNorm → attention (q/k/v with or without
bias, optional per-head q/k RMSNorm as in Qwen3, RoPE, GQA) → residual → RMSNorm → SwiGLU MLP →
residual — i.e. ``llama``, ``qwen2``, ``qwen3`` and ``mistral`` without a sliding window. Anything
else is refused with one line that names ``rollout=hf``. Projections wrapped by PEFT LoRA layers are read as
W + (α/r)·B·A, merged into a buffer per layer at every :meth:`Decoder.collect` (:func:`_lora_merged`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")
log = logging.getLogger(__name__)


class UnsupportedModelError(ValueError):
    """The backbone is not a Llama-style decoder this engine can run (one line; says what to use instead)."""


class Layer(NamedTuple):
    """One decoder layer's tensors (the module's own parameters; biases may be None). A tuple, so a compiled step
    takes every layer as plain inputs (guards on shapes, not on object identity: a ZeRO-3 gather's new storage
    does not recompile)."""

    ln1: torch.Tensor
    wq: torch.Tensor
    bq: torch.Tensor | None
    wk: torch.Tensor
    bk: torch.Tensor | None
    wv: torch.Tensor
    bv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    ln2: torch.Tensor
    w_gate: torch.Tensor
    w_up: torch.Tensor
    w_down: torch.Tensor


def _weight(module: Any, what: str, owner: str, merged: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The weight a decode step multiplies by: a plain Linear's own, or for a PEFT LoRA layer W + (α/r)·B·A
    written into a buffer of ``merged`` (:func:`_lora_merged`)."""
    if merged is not None and hasattr(module, "lora_A") and type(getattr(module, "base_layer", None)) is nn.Linear:
        return _lora_merged(module, f"{owner}.{what}", merged)
    if type(module) is not nn.Linear:  # any other wrapper's .weight alone would silently drop what it adds
        raise UnsupportedModelError(f"rollout 'static': {owner}.{what} is a {type(module).__name__}, not a plain "
                                    "Linear; merge any adapter first or use rollout=hf")  # fmt: skip
    return module.weight


@torch.no_grad()
def _lora_merged(layer: Any, key: str, merged: dict[str, torch.Tensor]) -> torch.Tensor:
    """W + (α/r)·B·A of a LoRA layer, recomputed into a buffer kept per layer (the LoRA weights change every step;
    one ``addmm`` per layer per rollout). Why a merged copy rather than the other two ways: merging into W in
    place and unmerging after each rollout drifts the frozen bf16 base by a rounding per round trip (hundreds of
    steps: many ulps), and separate low-rank GEMMs would thread A, B through every compiled decode function. The
    copy costs the targeted weights' bytes once more, during rollouts only (the attention and MLP projections: about
    the backbone less its embeddings): :meth:`Decoder.release_merged` frees it when a rollout ends, so training
    never holds it. The caching allocator mostly hands the same blocks back next time; where it does not, the
    engine's fingerprint sees new addresses and captures its CUDA graphs again. A layer whose LoRA is merged or
    switched off reads W itself."""
    base = layer.base_layer.weight
    if layer.merged or layer.disable_adapters or not layer.active_adapters:
        return base
    buf = merged.get(key)
    if buf is None or buf.shape != base.shape or buf.dtype != base.dtype or buf.device != base.device:
        buf = merged[key] = torch.empty_like(base)
    buf.copy_(base)
    for name in layer.active_adapters:  # r1v injects one ("default"); PEFT allows several
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight  # (r, in), (out, r)
        buf.addmm_(b.to(buf.dtype), a.to(buf.dtype), alpha=layer.scaling[name])
    return buf


class Decoder:
    """The tensors of an HF causal LM and the functions that run them.

    It only holds references; :meth:`collect` re-reads them after a ZeRO-3 gather, so the tensors are
    the full ones the decode loop must read. :meth:`fingerprint` tells a captured CUDA graph
    whether the tensors it baked in are still the ones in use.
    """

    def __init__(self, lm: nn.Module, compile: bool = False, fuse: bool = False, attention: str = "sdpa",
                 compile_mode: str | None = None, fuse_budget: int | None = None, split_k: bool = False,
                 compile_scope: str = "layer", compile_backend: str = "inductor") -> None:  # fmt: skip
        cfg = lm.config
        kind = getattr(cfg, "model_type", "?")
        if kind not in SUPPORTED:
            raise UnsupportedModelError(f"rollout 'static' runs Llama-style decoders ({', '.join(SUPPORTED)}); "
                                        f"the backbone is '{kind}': use rollout=hf")  # fmt: skip
        if getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None):
            raise UnsupportedModelError(f"rollout 'static': the backbone uses a sliding window "
                                        f"({cfg.sliding_window}); use rollout=hf")  # fmt: skip
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"rollout 'static': hidden_act '{cfg.hidden_act}' (only silu); use rollout=hf")
        base = getattr(lm, "model", None)
        if base is None or not hasattr(base, "layers") or not hasattr(lm, "lm_head"):
            raise UnsupportedModelError(f"rollout 'static': {type(lm).__name__} has no .model.layers/.lm_head; "
                                        "use rollout=hf")  # fmt: skip
        self.lm, self.base = lm, base
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = float(cfg.rms_norm_eps)
        self.vocab = cfg.vocab_size
        self.layers: list[Layer] = []
        self.fuse, self.fuse_budget = fuse, fuse_budget
        self.fused: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []  # (W_qkv, b_qkv, W_gate|up)
        dev = next(lm.parameters()).device
        # split-K decode GEMMs (:func:`linear`), sized by the GPU's SM count (8 on the CPU: the tests' path)
        sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 8
        self.split_k_sms = sms if split_k else 0
        if compile_scope not in ("layer", "step"):
            raise ValueError(f"rollout 'static': compile_scope '{compile_scope}' is not one of layer, step")
        self._fused_for, self._fused_n = -1, 0  # the layer count the fused copies were made for, and how many
        self.merged: dict[str, torch.Tensor] = {}  # LoRA layers' W + (α/r)·B·A, refreshed by collect()
        self.attention = attention  # "sdpa" (masked windows) or "triton" (filled columns only, split-K)
        if attention == "triton":  # imports triton: only when asked for
            from .triton_attention import decode_attention

            self._decode_attention = decode_attention
        self.collect()
        self.scale = self.head_dim**-0.5
        self.dtype = self.layers[0].wq.dtype
        self._fns = {False: (qkv, mlp_block), True: (qkv_fused, mlp_fused)}  # by: is this layer fused?
        self._eager = dict(self._fns)
        self._run_decode = run_layers
        opts = {"dynamic": False, "fullgraph": True, "mode": compile_mode, "backend": compile_backend}
        if compile and compile_scope == "step" and attention != "triton":  # a masked window per step: a compile each
            log.warning("rollout 'static': compile_scope=step needs attention=triton (one shape for every step); "
                        "compiling per layer instead")  # fmt: skip
            compile_scope = "layer"
        if compile and compile_scope == "step":  # the whole decode step is one graph: inductor fuses across layers
            log.warning(
                "rollout 'static': compile_scope=step is experimental: with one stacked KV cache it measured 29x "
                "slower than layer on an H100 (a whole-cache copy per layer); the per-layer caches that should fix "
                "it are not yet measured on a GPU (PERF_NOTES)"
            )
            self._run_decode = torch.compile(run_layers, **opts)
        elif compile:  # one compiled kernel set serves every layer: the weights are arguments, not attributes
            self._fns = {f: (torch.compile(a, **opts), torch.compile(m, **opts)) for f, (a, m) in self._fns.items()}
        self.sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 8

    def collect(self) -> None:
        """(Re-)read the layers' tensors: after a ZeRO-3 gather they live in new storage."""
        self.layers = []
        for i, layer in enumerate(self.base.layers):
            a, m, owner = layer.self_attn, layer.mlp, f"model.layers.{i}"
            q, k, v, o = (_weight(getattr(a, n, None), n, f"{owner}.self_attn", self.merged)
                          for n in ("q_proj", "k_proj", "v_proj", "o_proj"))  # fmt: skip
            gate, up, down = (_weight(getattr(m, n, None), n, f"{owner}.mlp", self.merged)
                              for n in ("gate_proj", "up_proj", "down_proj"))  # fmt: skip
            if any(getattr(m, n).bias is not None for n in ("gate_proj", "up_proj", "down_proj")):
                raise UnsupportedModelError(f"rollout 'static': {owner}.mlp has biases; use rollout=hf")
            qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
            self.layers.append(Layer(layer.input_layernorm.weight, q, a.q_proj.bias, k, a.k_proj.bias, v,
                                     a.v_proj.bias, o, a.o_proj.bias, None if qn is None else qn.weight,
                                     None if kn is None else kn.weight, layer.post_attention_layernorm.weight, gate,
                                     up, down))  # fmt: skip
        if self.fuse:
            self._refresh_fused()

    def release_merged(self) -> None:
        """Free the LoRA layers' merged weights (:func:`_lora_merged`) after a rollout; :meth:`collect` makes them
        again. The layer list holds them too, so it goes as well."""
        if self.merged:
            self.merged.clear()
            self.layers = []

    @torch.no_grad()
    def _refresh_fused(self) -> None:
        """Copy the current weights into the fused buffers, allocated once: their addresses stay, so captured
        graphs stay valid, and the copy on every call sees the optimizer steps since the last one."""
        fresh = self._fused_for != len(self.layers) or len(self.fused) != self._fused_n
        if fresh:
            self._fused_for = len(self.layers)
            self.fused = []
            per_layer = sum(t.numel() * t.element_size() for t in self._fused_parts(self.layers[0]))
            # a second copy of these weights: only for as many layers as the budget holds (the rest run unfused)
            n = len(self.layers)
            if self.fuse_budget is not None:
                n = min(n, self.fuse_budget // max(per_layer, 1))
            if n < len(self.layers):
                log.warning("rollout 'static': fused q|k|v and gate|up GEMMs for %d of %d layers (a fused copy is "
                            "%.2f GB per layer; %.1f GB of GPU memory is left beside the weights and the KV cache); "
                            "the other layers run unfused", n, len(self.layers), per_layer / 1e9,
                            self.fuse_budget / 1e9)  # fmt: skip
            self._fused_n = n
        for i, w in enumerate(self.layers[: self._fused_n]):
            parts = (w.wq, w.wk, w.wv), _qkv_bias(w), (w.w_gate, w.w_up)
            if fresh:
                self.fused.append(tuple(None if p is None else torch.cat(p) for p in parts))
            else:
                for buffer, p in zip(self.fused[i], parts, strict=True):
                    if p is not None:
                        torch.cat(p, out=buffer)

    @staticmethod
    def _fused_parts(w: Layer) -> list[torch.Tensor]:
        return [t for t in (w.wq, w.wk, w.wv, w.bq, w.bk, w.bv, w.w_gate, w.w_up) if t is not None]

    def fingerprint(self) -> tuple[int, ...]:
        """Storage addresses of every model tensor a step reads (a CUDA graph replays those addresses): the
        embedding, final norm and LM head, every layer's tensors, the fused buffers, and the rotary module's
        buffers (``inv_freq``). A tensor missing here would let a replay read memory freed since its capture."""
        out = [self.base.embed_tokens.weight.data_ptr(), self.base.norm.weight.data_ptr(),
               self.lm.lm_head.weight.data_ptr()]  # fmt: skip
        out += [t.data_ptr() for t in self.base.rotary_emb.buffers()]
        for layer in self.layers:
            out += [t.data_ptr() for t in layer if t is not None]
        for fused in self.fused:
            out += [t.data_ptr() for t in fused if t is not None]
        return tuple(out)

    # -- pieces ----------------------------------------------------------------------------------
    def rope(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) positions -> cos, sin (B, 1, T, hd) by the model's own rotary module (any RoPE scaling)."""
        cos, sin = self.base.rotary_emb(like, positions)
        return cos[:, None], sin[:, None]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, D) last hidden states -> (B, V) float32 logits."""
        return F.linear(rms_norm(h, self.base.norm.weight, self.eps), self.lm.lm_head.weight).float()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base.embed_tokens(ids)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache_k: Sequence[torch.Tensor],
                cache_v: Sequence[torch.Tensor], write: torch.Tensor | slice, window: int, mask: torch.Tensor | None,
                bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
        """All layers over ``h`` (B, T, D); K/V of the T new positions go to cache columns ``write``.

        ``cache_k``/``cache_v`` hold one (B, H_kv, L, hd) tensor per layer; attention reads columns ``[:window]`` under
        ``mask`` (B, 1, T, window), True = attend — or, for one new token with ``attention="triton"``, only
        columns ``[start[b], end)`` given as ``bounds`` (device tensors (B,) and (1,)). Returns the last
        position's hidden state (B, D).
        """
        decode = h.shape[1] == 1  # compiled code for decode only: prompts vary in length (a compile per P)
        splits = splits_for(h.shape[0] * self.n_kv, self.sms)
        consts = StepConsts(self.n_heads, self.n_kv, self.head_dim, self.eps, self.scale,
                            self.split_k_sms if decode else 0, splits)  # fmt: skip
        attn = getattr(self, "_decode_attention", None) if bounds is not None else None
        run = self._run_decode if decode else run_layers
        fns = self._fns if decode else self._eager
        return run(h, cos, sin, cache_k, cache_v, write, window, mask, bounds, list(self.layers), list(self.fused),
                   fns, attn, consts)  # fmt: skip


@dataclass(frozen=True)
class StepConsts:
    """The numbers a decode step is specialised on (constants of a compiled step)."""

    n_heads: int
    n_kv: int
    head_dim: int
    eps: float
    scale: float
    sms: int  # split-K GEMMs for this many SMs (0: off)
    splits: int  # programs per (row, KV head) of the split-K attention kernel


def splits_for(rows: int, sms: int) -> int:
    """Programs per (row, KV head) of the attention kernel: about two waves of the SMs in all, at most 16."""
    return max(1, min(16, -(-2 * sms // rows)))


def run_layers(h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache_k: Sequence[torch.Tensor],
               cache_v: Sequence[torch.Tensor],
               write: torch.Tensor | slice, window: int, mask: torch.Tensor | None,
               bounds: tuple[torch.Tensor, torch.Tensor] | None, layers: list[Layer],
               fused: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]], fns: dict[bool, tuple[Any, Any]],
               attn: Callable[..., torch.Tensor] | None, c: StepConsts) -> torch.Tensor:  # fmt: skip
    """Every layer over ``h`` (B, T, D) (see :meth:`Decoder.forward`): the body a whole-step compile traces, or the
    loop over the per-layer (compiled) functions ``fns`` (keyed by: is this layer fused?). Returns (B, D)."""
    dims = (c.n_heads, c.n_kv, c.head_dim, c.eps)
    for i, w in enumerate(layers):
        ck, cv = cache_k[i], cache_v[i]
        is_fused = i < len(fused)
        fqkv, fmlp = fns[is_fused]
        if is_fused:
            wqkv, bqkv, wgu = fused[i]  # K/V written into the cache inside the (compiled) function
            q = fqkv(h, cos, sin, w.ln1, wqkv, bqkv, w.q_norm, w.k_norm, ck, cv, write, *dims, c.sms)  # (B,H,T,hd)
        else:
            q = fqkv(h, cos, sin, w.ln1, w.wq, w.bq, w.wk, w.bk, w.wv, w.bv, w.q_norm, w.k_norm, ck, cv, write, *dims,
                     c.sms)  # fmt: skip
        if bounds is not None and attn is not None:  # one new token: the filled columns only (triton_attention.py)
            b = h.shape[0]
            o = attn(q.reshape(b, c.n_kv, -1, c.head_dim), ck, cv, *bounds, c.scale, c.splits)
            o = o.view(b, 1, -1)  # (B, 1, H·hd): query head h·G + g used KV head h
        else:
            o = attend(q, ck[:, :, :window], cv[:, :, :window], mask, c.scale)  # (B, T, H·hd)
        if is_fused:
            h = fmlp(h, o, w.wo, w.bo, w.ln2, wgu, w.w_down, c.eps, c.sms)
        else:
            h = fmlp(h, o, w.wo, w.bo, w.ln2, w.w_gate, w.w_up, w.w_down, c.eps, c.sms)
    return h[:, -1]


def head_dim_ok(head_dim: int) -> bool:
    """Whether the split-K decode kernel takes this head size (it loads whole heads: a power of two ≥ 16)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def _qkv_bias(w: Layer) -> tuple[torch.Tensor, ...] | None:
    """[b_q, b_k, b_v] with zeros for a missing one; None when none has a bias."""
    if w.bq is None and w.bk is None and w.bv is None:
        return None
    return tuple(b if b is not None else m.new_zeros(m.shape[0]) for b, m in ((w.bq, w.wq), (w.bk, w.wk), (w.bv, w.wv)))


# -- tensor functions (weights are arguments, so torch.compile fuses them once for every layer) ------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's LlamaRMSNorm: normalise in float32, scale in the input dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def store(ck: torch.Tensor, cv: torch.Tensor, k: torch.Tensor, v: torch.Tensor, write: torch.Tensor | slice) -> None:
    """K, V (B, H_kv, T, hd) into one layer's cache (B, H_kv, L, hd) at columns ``write``: a slice (prefill) or a
    (1,) device index (decode: graph-safe; inside a compiled function inductor fuses it with the rotary, in
    place)."""
    if isinstance(write, slice):
        ck[:, :, write], cv[:, :, write] = k, v
    else:
        ck.index_copy_(2, write, k)
        cv.index_copy_(2, write, v)


def qkv(h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ln1: torch.Tensor, wq: torch.Tensor,
        bq: torch.Tensor | None, wk: torch.Tensor, bk: torch.Tensor | None, wv: torch.Tensor, bv: torch.Tensor | None,
        q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, ck: torch.Tensor, cv: torch.Tensor,
        write: torch.Tensor | slice, n_heads: int, n_kv: int, head_dim: int, eps: float,
        sms: int = 0) -> torch.Tensor:  # fmt: skip
    """(B, T, D) -> q (B, H, T, hd) with rotary; k (rotary applied) and v (B, H_kv, T, hd) go into the cache.
    ``sms`` > 0: split-K GEMMs where the output has few tiles for that many SMs (:func:`linear`)."""
    b, t, _ = h.shape
    x = rms_norm(h, ln1, eps)
    q = linear(x, wq, bq, sms).view(b, t, n_heads, head_dim)
    k = linear(x, wk, bk, sms).view(b, t, n_kv, head_dim)
    v = linear(x, wv, bv, sms).view(b, t, n_kv, head_dim).transpose(1, 2)
    if q_norm is not None:  # Qwen3: per-head RMSNorm before the rotation
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    store(ck, cv, k * cos + _rotate_half(k) * sin, v, write)
    return q


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B, H, T, hd) over k, v (B, H_kv, W, hd) with mask (B, 1, T, W) -> (B, T, H·hd).

    For one new token (T = 1) the G query heads that share a KV head become G queries of that head —
    (B, H_kv, G, hd) — so the cache is read once per KV head and never expanded (GQA without repeat_kv).
    """
    b, n_heads, t, hd = q.shape
    n_kv = k.shape[1]
    if t == 1:
        g = n_heads // n_kv
        o = F.scaled_dot_product_attention(q.view(b, n_kv, g, hd), k, v, attn_mask=mask, scale=scale)  # (B,Hkv,G,hd)
        return o.reshape(b, 1, n_heads * hd)
    if n_kv != n_heads:  # prefill: expand as HF does (repeat_kv)
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, H, T, hd)
    return o.transpose(1, 2).reshape(b, t, n_heads * hd)


def mlp_block(h: torch.Tensor, o: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor | None, ln2: torch.Tensor,
              w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, eps: float,
              sms: int = 0) -> torch.Tensor:  # fmt: skip
    """Attention output projection + residual, then RMSNorm → SwiGLU → residual: (B, T, D)."""
    h = h + linear(o, wo, bo, sms)
    x = rms_norm(h, ln2, eps)
    return h + linear(F.silu(linear(x, w_gate, None, sms)) * linear(x, w_up, None, sms), w_down, None, sms)


def qkv_fused(h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ln1: torch.Tensor, wqkv: torch.Tensor,
              bqkv: torch.Tensor | None, q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, ck: torch.Tensor,
              cv: torch.Tensor, write: torch.Tensor | slice, n_heads: int, n_kv: int, head_dim: int,
              eps: float, sms: int = 0) -> torch.Tensor:  # fmt: skip
    """:func:`qkv` with one GEMM over the stacked [W_q; W_k; W_v] (fewer, larger kernels at decode batch sizes)."""
    b, t, _ = h.shape
    x = rms_norm(h, ln1, eps)
    q, k, v = linear(x, wqkv, bqkv, sms).split([n_heads * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1)
    q, k = q.reshape(b, t, n_heads, head_dim), k.reshape(b, t, n_kv, head_dim)
    v = v.reshape(b, t, n_kv, head_dim).transpose(1, 2)
    if q_norm is not None:
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    store(ck, cv, k * cos + _rotate_half(k) * sin, v, write)
    return q


def mlp_fused(h: torch.Tensor, o: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor | None, ln2: torch.Tensor,
              w_gate_up: torch.Tensor, w_down: torch.Tensor, eps: float, sms: int = 0) -> torch.Tensor:  # fmt: skip
    """:func:`mlp_block` with one GEMM over the stacked [W_gate; W_up]."""
    h = h + linear(o, wo, bo, sms)
    gate, up = linear(rms_norm(h, ln2, eps), w_gate_up, None, sms).chunk(2, dim=-1)
    return h + linear(F.silu(gate) * up, w_down, None, sms)


def split_count(m: int, n: int, k: int, sms: int) -> int:
    """Slices of K for an (m × k) @ (k × n) decode GEMM: enough that the output's 64 × 128 tiles, times the slices,
    reach the SMs (at most 8, a power of two dividing k into multiples of 8 elements: 16-byte aligned slices); 1 when
    the tiles already do."""
    tiles = -(-m // 64) * -(-n // 128)
    s = 1
    while s < 8 and tiles * s * 2 <= sms and k % (s * 2 * 8) == 0:
        s *= 2
    return s


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, sms: int = 0) -> torch.Tensor:
    """``F.linear``, or for a decode GEMM whose output has few tiles (``sms`` > 0: the GPU's SM count) a split-K
    product: K cut into s slices, one batched GEMM (s × the tiles, so the SMs all read weights), the slices summed
    in float32 (inside a compiled function that sum fuses with what follows). At Qwen2.5-1.5B, batch 64, the down
    projection (64 × 8960 @ 8960 × 1536: 12 tiles for 132 SMs) read its 27.5 MB at 0.87 TB/s on an H100."""
    if sms <= 0:
        return F.linear(x, w, b)
    n, k = w.shape
    m = x.numel() // k
    s = split_count(m, n, k, sms)
    if s == 1:
        return F.linear(x, w, b)
    parts = torch.bmm(x.reshape(m, s, k // s).transpose(0, 1), w.view(n, s, k // s).permute(1, 2, 0))  # (s, m, n)
    out = parts.float().sum(0)
    if b is not None:
        out = out + b.float()
    return out.to(x.dtype).view(*x.shape[:-1], n)

"""Per-GPU training memory planner: explicit formulas, every input printed, every assumption stated.

Sizes are bytes (printed as GiB = 2^30 bytes). P = a part's parameters, T = its trainable parameters,
N = GPUs, B = micro-batch (sequences per forward/backward on one GPU), L = tokens per sequence in the
backbone (SFT: ``seq_len``; RL: ``prompt_len + completion_len``), h = layer width, kv = width of K (= V),
I = MLP width, V = vocabulary. Per GPU:

- **weights**: Σ P · 2 (bf16), ÷ N under ZeRO-3 (which shards frozen parameters too), plus under
  ZeRO-3 on N > 1 GPUs a gather buffer of 2 × the largest block (layer or embedding) · 2 bytes: the block in
  use and the prefetched one.
- **reference** (RL with β > 0): π_ref as another frozen copy, sharded like the policy: Σ P · 2, ÷ N under
  ZeRO-3. ``reference=trainable`` counts only copies of the trainable parts (the frozen trunk is shared).
- **gradients**: Σ T · g, g = 4 (fp32 gradient partitions, as DeepSpeed's bf16 optimizer keeps them; set
  ``grad_bytes=2`` for bf16 gradients), ÷ N under ZeRO-2/3.
- **optimizer**: Σ T · 12 (AdamW: fp32 master weights + two fp32 moments), ÷ N under ZeRO-2/3.
- **without DeepSpeed** (ZeRO 0: ``trainer=gpu`` or DDP) trainable weights stay in the dtype they were built in
  and frozen parts are held in bf16. A trainable weight built in bf16 (the backbone) costs 2 (weight) + 2
  (gradient) + 6 (torch-optimi's AdamW: two bf16 moments and a Kahan compensation, r1v/runtime/optim.py); one built
  in fp32 (the adapter, LoRA weights) 4 + 4 + 8 (the weight is its own master). A reference copy keeps each
  trainable tensor's own dtype.
- **activations**: kept only by parts that gradients pass through, i.e. a trainable part and every part
  after it (a frozen encoder before the first trainable part runs without autograd). Per transformer layer
  and token, without checkpointing, ``a = 2·(6h + 2kv + n·I) + 2·4h`` bytes: bf16 norm input and output twice,
  q, attention output, k, v, n MLP-wide tensors (n = 4 for SwiGLU: gate, up, act(gate), product; n = 2 for a
  GELU MLP: fc1 out, GELU out) and fp32 copies of the two RMSNorm inputs (Qwen2-32B: a ≈ 64·h, attention by
  SDPA/flash, so no L² term). A part of ``layers`` layers over ``t`` tokens keeps ``layers·t·a`` bytes; with
  activation checkpointing ``layers·t·2h`` (each layer's input) + ``t·a`` (one layer recomputed during
  backward). The adapter (LayerNorm → Linear → GELU → Linear) keeps ``2·(2·in + 2·hidden)`` per token.
  **Logits**: ``B·L·V·4`` (the fp32 upcast for the loss), doubled when gradients flow (its gradient); with
  the LM head run in chunks of ``C`` tokens, each recomputed in the backward (``loss_chunk``: SFT's
  ``stage.loss_chunk_tokens``, RL's ``stage.logp_chunk``), ``B·min(L, C, A)·V·4``, doubled likewise, where
  ``A`` (``answer_tokens``) is the number of SFT tokens that carry a loss (default ``L``).
- **rollout** (RL): KV cache of the sequences decoded at once:
  ``2 · layers · kv · 2 bytes · R · (prompt_len + completion_len)``, R = ``rollout_batch`` (default G).
- **rollout merged LoRA** (RL with ``stage.lora``): ``rollout=static`` decodes from a merged copy of the wrapped
  backbone layers, W + (α/r)·B·A, ``Σ W · 2``, made for each rollout and freed after it: a rollout-phase item like
  the gather below.
- **rollout fused copies** (RL, ``rollout=static`` with ``fuse=true``): a second copy of every layer's q|k|v and
  gate|up weights, kept between rollouts, ``layers · h · (q + 2kv + 2I) · 2``. The engine makes only as many
  layers' copies as the memory left free allows, so they are listed apart and not in the total that must fit.
- **rollout gather** (RL under ZeRO-3 on N > 1 GPUs, ``rollout_gather=whole``): an engine that reads whole
  weight tensors (``rollout=static``) decodes from the gathered model, so during the rollout each GPU also
  holds the ``(1 − 1/N)`` of the weights its shard lacks: ``Σ P · 2 · (1 − 1/N)``. It lives in the rollout
  phase, activations in the update phase, so the larger of the two counts. ``layer`` (fetch per layer,
  ``rollout=hf``) adds nothing beyond the gather buffer already in **weights**.
- **audio** (issue 26, with an audio encoder composed): the encoder's layers over ``audio_windows`` fixed windows
  of ``window_frames / 2`` frames each, and the audio adapter over their tokens, counted like the vision path but
  as a side branch: gradients reach it only from its own trainable parts (a trainable image adapter does not
  make the audio encoder keep activations, nor the reverse).
- **other**: a fixed allowance for the CUDA context, NCCL and communication buckets, allocator slack.

Not modelled: fragmentation beyond that allowance, transient forward buffers of frozen parts, CPU offload,
tensor/sequence parallelism. Expect ±30% on activations; use it to choose a strategy, not to fill the last GB.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

GIB = 2**30
STRATEGIES = {0: "DDP", 2: "ZeRO-2", 3: "ZeRO-3"}  # in order of communication cost per step
CHECKPOINTABLE = ("vision", "backbone")

# Knob name -> help (``planner.<knob>=...`` overrides of ``python -m r1v inspect``).
KNOBS: dict[str, str] = {
    "zero": "ZeRO stage: 0 (DDP), 2 or 3 (default: trainer.strategy.stage, else 0)",
    "gpus": "number of GPUs (default: trainer.devices when a number, else 8)",
    "micro_batch": "sequences per forward/backward on one GPU (default 1)",
    "seq_len": "tokens per SFT sequence, image tokens included (default 16384, R1V's context)",
    "images": "images per sample (default 1)",
    "tiles": "tiles per image (default: model.max_tiles, + 1 thumbnail when > 1)",
    "ckpt": "activation checkpointing: none, all, or parts, e.g. backbone or [vision,backbone] (default none)",
    "grad_bytes": "bytes per gradient element: 4 (fp32, default) or 2 (bf16)",
    "gpu_gb": "memory of one GPU in GB (10^9 bytes; default 141, an H200)",
    "overhead_gib": "allowance for CUDA context, NCCL buffers, allocator slack in GiB (default 3)",
    "rl": "plan an RL step (GRPO): true/false (default: true when the stage is grpo or has group_size)",
    "group_size": "RL: completions per prompt G (default: stage.group_size, else 8)",
    "prompt_len": "RL: prompt tokens, image tokens included (default 4096)",
    "completion_len": "RL: completion tokens (default: stage.max_completion_tokens, else 8192)",
    "rollout_batch": "RL: sequences decoded at once per GPU (default: G)",
    "beta": "RL: KL weight β; > 0 keeps a reference model (default: stage.beta or stage.kl_coef, else 0)",
    "reference": "RL: full (a frozen copy of the whole model, default) or trainable (copies of trainable parts)",
    "rollout_gather": "RL under ZeRO-3: whole (the model gathered for the rollout, default) or layer (per layer)",
    "loss_chunk": "tokens per LM-head chunk of the loss (0: the full logits; default: stage.loss_chunk_tokens, "
    "RL: stage.logp_chunk)",
    "audio_windows": "audio encoder windows per sample (each the encoder's fixed window; default 1)",
    "answer_tokens": "SFT: tokens per sequence that carry a loss; the chunked loss runs the LM head on these only "
    "(default: every token, the worst case)",
}


@dataclass(frozen=True)
class Part:
    """What the planner needs to know of one model part (vision, adapter, backbone)."""

    name: str
    params: int
    trainable: int = 0
    layers: int = 0
    act_bytes: int = 0  # bytes kept per token per layer without checkpointing
    hidden: int = 0  # width of a layer's input (what checkpointing keeps, in bf16)
    tokens: int | None = None  # tokens per sample through this part; None: the sequence (backbone)
    largest_block: int = 0  # parameters of the largest layer or embedding (ZeRO-3 gathers it whole)
    vocab: int = 0  # backbone: logits width
    kv_dim: int = 0  # backbone: K (= V) width per layer, for the KV cache
    branch: str = ""  # a side input branch ("audio"): gradients reach it only from its own trainable parts
    low: int = 0  # trainable parameters built in a 2-byte dtype (bf16): their optimiser state without DeepSpeed
    fused: int = 0  # backbone: parameters of rollout=static's fused q|k|v and gate|up copies
    merged: int = 0  # backbone: parameters of the LoRA-wrapped layers (the rollout's merged copy)


@dataclass(frozen=True)
class Settings:
    zero: int = 0
    gpus: int = 8
    micro_batch: int = 1
    seq_len: int = 16384
    images: int = 1
    tiles: int = 1
    ckpt: tuple[str, ...] = ()
    weight_bytes: int = 2
    grad_bytes: int = 4
    optim_bytes: int = 12
    gpu_gb: float = 141.0
    overhead_gib: float = 3.0
    rl: bool = False
    group_size: int = 8
    prompt_len: int = 4096
    completion_len: int = 8192
    rollout_batch: int | None = None
    beta: float = 0.0
    reference: str = "full"
    rollout_gather: str = "whole"
    loss_chunk: int = 0
    answer_tokens: int | None = None
    audio_windows: int = 1

    @property
    def tokens(self) -> int:
        """Backbone tokens per sequence."""
        return self.prompt_len + self.completion_len if self.rl else self.seq_len

    @property
    def capacity(self) -> float:
        return self.gpu_gb * 1e9


@dataclass
class Estimate:
    """Per-GPU bytes by kind."""

    weights: float = 0.0
    reference: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    logits: float = 0.0  # part of activations, shown separately
    rollout: float = 0.0
    gather: float = 0.0  # rollout phase only: the whole-model gather of a ZeRO-3 rollout
    merged: float = 0.0  # rollout phase only: the merged LoRA layers rollout=static decodes from
    fused: float = 0.0  # rollout=static's fused copies: only from free memory, not in the total
    other: float = 0.0
    per_part_activations: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.weights + self.reference + self.gradients + self.optimizer \
            + max(self.activations, self.gather + self.merged) + self.rollout + self.other  # fmt: skip


def transformer_layer_bytes(hidden: int, kv_dim: int, ffn: int, ffn_tensors: int) -> int:
    """Bytes one transformer layer keeps per token for backward (bf16 tensors + fp32 norm inputs)."""
    return 2 * (6 * hidden + 2 * kv_dim + ffn_tensors * ffn) + 2 * 4 * hidden


def adapter_bytes(in_width: int, hidden: int) -> int:
    """Bytes the MLP adapter keeps per token: LayerNorm in/out (in_width), Linear out and GELU out (hidden)."""
    return 2 * (2 * in_width + 2 * hidden)


def kv_cache_bytes(layers: int, kv_dim: int, rows: int, tokens: int, elem_bytes: int = 2) -> int:
    """K and V of ``rows`` sequences of ``tokens`` positions: ``2 · layers · kv · bytes · rows · tokens``."""
    return 2 * layers * kv_dim * elem_bytes * rows * tokens


def estimate(parts: Iterable[Part], s: Settings) -> Estimate:
    """Apply the module docstring's formulas to ``parts`` (in forward order) under settings ``s``."""
    parts = list(parts)
    n = max(1, s.gpus)
    est = Estimate(other=s.overhead_gib * GIB)
    total_params = sum(p.params for p in parts)
    trainable = sum(p.trainable for p in parts)
    est.weights = total_params * s.weight_bytes / (n if s.zero == 3 else 1)
    if s.zero == 3 and n > 1:
        est.weights += 2 * max((p.largest_block for p in parts), default=0) * s.weight_bytes
    shard_states = n if s.zero >= 2 else 1
    est.gradients = trainable * s.grad_bytes / shard_states
    est.optimizer = trainable * s.optim_bytes / shard_states
    if s.rl and s.beta > 0:
        ref_params = total_params if s.reference == "full" else trainable
        est.reference = ref_params * s.weight_bytes / (n if s.zero == 3 else 1)
    if s.zero == 0:  # no DeepSpeed: trainable weights as built (see the module docstring)
        low = sum(min(p.low, p.trainable) for p in parts)
        wide = trainable - low
        est.weights += wide * (4 - s.weight_bytes)
        est.gradients, est.optimizer = low * 2 + wide * 4, low * 6 + wide * 8
        if s.rl and s.beta > 0:
            est.reference += wide * (4 - s.weight_bytes)
    grad_flows, branches = False, {}  # gradient reaches the main path / each side branch
    for p in parts:
        if p.branch:
            branches[p.branch] = flows = branches.get(p.branch, False) or p.trainable > 0
            grad_flows = grad_flows or flows
        else:
            grad_flows = flows = grad_flows or p.trainable > 0
        if not flows:
            continue
        tokens = s.micro_batch * (s.tokens if p.tokens is None else p.tokens)
        if p.name in s.ckpt and p.layers > 1:
            act = p.layers * tokens * 2 * p.hidden + tokens * p.act_bytes
        else:
            act = max(1, p.layers) * tokens * p.act_bytes
        est.per_part_activations[p.name] = act
        est.activations += act
    backbone = next((p for p in parts if p.vocab), None)
    if backbone is not None:
        rows = s.tokens
        if s.loss_chunk:  # one chunk's logits at a time; SFT's chunks cover the answer tokens only
            answer = s.tokens if s.answer_tokens is None or s.rl else s.answer_tokens
            rows = min(s.tokens, s.loss_chunk, answer)
        est.logits = s.micro_batch * rows * backbone.vocab * 4 * (2 if grad_flows else 1)
        est.activations += est.logits
        if s.rl:
            rollout = s.rollout_batch or s.group_size
            est.rollout = kv_cache_bytes(backbone.layers, backbone.kv_dim, rollout, s.tokens, s.weight_bytes)
            est.merged = backbone.merged * s.weight_bytes
            est.fused = backbone.fused * s.weight_bytes
    if s.rl and s.zero == 3 and n > 1 and s.rollout_gather == "whole":
        est.gather = total_params * s.weight_bytes * (1 - 1 / n)
    return est


@dataclass(frozen=True)
class Recommendation:
    zero: int | None  # None: nothing fits
    ckpt: bool  # needs activation checkpointing (of every part that allows it)
    text: str


def compare(parts: list[Part], s: Settings) -> dict[tuple[int, bool], Estimate]:
    """Estimates for DDP / ZeRO-2 / ZeRO-3, as configured and with checkpointing of every part that allows it."""
    out = {}
    for zero in STRATEGIES:
        out[(zero, False)] = estimate(parts, replace(s, zero=zero))
        out[(zero, True)] = estimate(parts, replace(s, zero=zero, ckpt=CHECKPOINTABLE))
    return out


def recommend(parts: list[Part], s: Settings) -> Recommendation:
    """The strategy with the least communication that fits (checkpointing as configured first, then all on)."""
    table = compare(parts, s)
    cap = s.capacity
    for ckpt in (False, True):
        for zero, name in STRATEGIES.items():
            if table[(zero, ckpt)].total > cap:
                continue
            how = ("one GPU without sharding, trainer=gpu (ZeRO-2 on one GPU ran 1.54x slower for 1.5B SFT on an H100: "
                   "benchmarks/README.md)" if s.gpus == 1 else name)  # fmt: skip
            if ckpt and set(CHECKPOINTABLE) - set(s.ckpt):
                how += " with activation checkpointing (planner.ckpt=all; activations dominate)"
            text = f"{how}: {table[(zero, ckpt)].total / GIB:.1f} GiB of {cap / GIB:.1f}"
            if s.gpus > 1 and zero < 3 and table[(3, ckpt)].total <= cap:
                text += (
                    f"; ZeRO-3 fits too ({table[(3, ckpt)].total / GIB:.1f} GiB) but gathers every parameter in "
                    "every forward and backward: more communication for memory that is not needed"
                )
            elif s.gpus > 1 and zero == 3:
                text += "; weights or optimizer states must be sharded (DDP and ZeRO-2 do not fit)"
            if s.zero != zero:
                text += f" (configured: {STRATEGIES.get(s.zero, f'ZeRO-{s.zero}')})"
            return Recommendation(zero, ckpt, text)
    if s.rl and s.rollout_gather == "whole" and table[(3, True)].gather:
        layered = recommend(parts, replace(s, rollout_gather="layer"))
        if layered.zero is not None:
            text = (
                f"{layered.text}, with rollouts gathered layer by layer (stage.rollout_gather=layer: "
                "rollout=hf, each decode step all-gathers the model); the whole-model gather does not fit"
            )
            return Recommendation(layered.zero, layered.ckpt, text)
    need = table[(3, True)].total / GIB
    text = (
        f"nothing fits on {s.gpus} GPU(s): ZeRO-3 with checkpointing needs {need:.1f} GiB of {cap / GIB:.1f}; "
        "add GPUs, shorten sequences or the micro-batch"
    )
    return Recommendation(None, True, text)


def parse_knobs(pairs: Mapping[str, str], base: Settings) -> Settings:
    """Apply ``planner.<knob>=value`` strings to ``base``; unknown knobs and bad values raise one line."""
    import yaml

    from r1v.core.registry import did_you_mean

    kinds = {f.name: f.type for f in fields(Settings)}
    changes: dict[str, Any] = {}
    for key, raw in pairs.items():
        if key not in KNOBS:
            known = sorted(KNOBS)
            raise ValueError(
                f"planner.{key}: no such planner knob (knobs: {', '.join(known)}){did_you_mean(key, known)}"
            )
        value = yaml.safe_load(raw) if raw.strip() else None
        try:
            if key == "ckpt":
                value = _ckpt(value)
            elif key == "reference" and value not in ("full", "trainable"):
                raise ValueError("use full or trainable")
            elif key == "rollout_gather" and value not in ("whole", "layer"):
                raise ValueError("use whole or layer")
            elif key == "zero" and value not in STRATEGIES:
                raise ValueError(f"use one of {', '.join(map(str, STRATEGIES))}")
            elif key == "rl":
                value = _bool(value)
            elif value is not None and kinds[key].startswith(("int", "float")):
                value = float(value) if kinds[key].startswith("float") else _int(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"planner.{key}={raw}: {e} ({KNOBS[key]})") from None
        changes[key] = value
    return replace(base, **changes)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or float(value) < 0:
        raise ValueError("expected a whole number ≥ 0")
    return int(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _ckpt(value: Any) -> tuple[str, ...]:
    if value in (None, "none", False, []):
        return ()
    if value in ("all", True):
        return CHECKPOINTABLE
    names = [str(v).strip() for v in (value if isinstance(value, list) else str(value).split(","))]
    for name in names:
        if name not in CHECKPOINTABLE:
            raise ValueError(f"'{name}' cannot be checkpointed (parts: {', '.join(CHECKPOINTABLE)}; or none, all)")
    return tuple(names)


def report(parts: list[Part], s: Settings, sources: Mapping[str, str] | None = None) -> list[str]:
    """The plan as printable lines: inputs, per-kind GiB, the strategy table and the recommendation."""
    src = sources or {}
    est = estimate(parts, s)
    table = compare(parts, s)
    gib = lambda b: f"{b / GIB:7.1f} GiB"  # noqa: E731
    strategy = STRATEGIES.get(s.zero, f"ZeRO-{s.zero}")
    ckpt = ", ".join(f"{p} {'on' if p in s.ckpt else 'off'}" for p in CHECKPOINTABLE)
    mode = (f"RL: G={s.group_size}, prompt {s.prompt_len} + completion {s.completion_len} tokens, "
            f"rollout batch {s.rollout_batch or s.group_size}, β={s.beta:g}, reference {s.reference}"
            if s.rl else f"SFT: {s.seq_len} tokens per sequence")  # fmt: skip
    split = ", ".join([*(f"{k} {v / GIB:.1f}" for k, v in est.per_part_activations.items()),
                       f"logits {est.logits / GIB:.1f}"])  # fmt: skip
    precision = (f"bf16 weights ({s.weight_bytes} B), gradients {s.grad_bytes} B, AdamW {s.optim_bytes} B per "
                 "trainable parameter (fp32 master + 2 moments)" if s.zero else
                 "no DeepSpeed: frozen weights bf16; a trainable bf16 weight 2 B + gradient 2 + Kahan AdamW 6, "
                 "a trainable fp32 weight 4 + gradient 4 + AdamW 8")  # fmt: skip
    lines = [
        "memory plan per GPU (r1v/planner.py; planner.<knob>=... overrides, see `python -m r1v inspect --help`)",
        f"  strategy      {strategy} (from {src.get('zero', 'planner.zero')}) on {s.gpus} GPU(s) "
        f"(from {src.get('gpus', 'planner.gpus')})",
        f"  precision     {precision}",
        f"  batch         micro-batch {s.micro_batch}; {mode}; {s.images} image(s) × {s.tiles} tile(s) per sample"
        + (f", {s.audio_windows} audio window(s)" if any(p.branch == "audio" for p in parts) else "")
        + (f"; LM head in chunks of {s.loss_chunk} tokens" if s.loss_chunk else ""),
        f"  checkpointing {ckpt}",
        f"  weights      {gib(est.weights)}",
        f"  reference    {gib(est.reference)}",
        f"  gradients    {gib(est.gradients)}",
        f"  optimizer    {gib(est.optimizer)}",
        f"  activations  {gib(est.activations)}  ({split})",
        f"  rollout KV   {gib(est.rollout)}",
        *([f"  gathered     {gib(est.gather)}  (the ZeRO-3 rollout's whole-model gather; the rollout phase "
           "holds it instead of activations, the larger counts)"] if est.gather else []),
        *([f"  merged LoRA  {gib(est.merged)}  (rollout=static decodes from merged LoRA layers; the rollout "
           "phase holds them instead of activations, the larger counts)"] if est.merged else []),
        f"  other        {gib(est.other)}",
        f"  total        {gib(est.total)} of {s.capacity / GIB:.1f} GiB ({s.gpu_gb:g} GB): "
        f"{'fits' if est.total <= s.capacity else 'does NOT fit'}",
        *([f"  + fused      {gib(est.fused)}  (rollout=static's fused q|k|v and gate|up copies, made only from "
           f"memory left free; with all of them {(est.total + est.fused) / GIB:.1f} GiB)"] if est.fused else []),
        "  strategies    "
        + " | ".join(f"{name} {table[(z, False)].total / GIB:.1f} (ckpt all {table[(z, True)].total / GIB:.1f})"
                     for z, name in STRATEGIES.items())
        + " GiB",
        f"  recommended   {recommend(parts, s).text}",
    ]  # fmt: skip
    return lines

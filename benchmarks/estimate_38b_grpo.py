"""A paper estimate of R1V's GRPO step at 38B on 8 H200s (issue 24), for the 8-GPU run to meet.

    python benchmarks/estimate_38b_grpo.py            (a few seconds on the CPU; writes results/estimate_38b_grpo.json)

Nothing here runs on a GPU. Every time comes from a figure already measured in ``benchmarks/results/`` and
scaled by arithmetic that is printed with it; every memory figure comes from the planner
(:mod:`r1v.runtime.planner`) on ``model=r1v38b`` built on the meta device; the assumptions are listed in the JSON.

The step, per GPU (8 prompts x G 8 = 64 completions of 8,192 tokens after ~1.4k-token prompts):

- **rollout**: prefill (vision encoder + backbone over the prompts) at the prefill rate measured at 32B shapes,
  then ``passes x 8,192`` decode steps. A decode step reads the backbone's weights and the filled K/V once
  (the floor, at the H200's 4.2 TB/s); the measured 32B step (24 layers, H100) gives how far above the floor the
  engine runs, scaled to 64 layers and the H200 two ways (low / high, see :func:`decode_step_ms`). Rows per pass
  are as many as the planner fits beside the ZeRO-3 whole-model gather.
- **reward**: rule rewards on 64 strings, in worker processes: well under a second (timed inside rollout).
- **reference** (β > 0) and **update**: hardware FLOPs (model FLOPs as ``r1v/runtime/perf.py`` counts them, plus
  what activation checkpointing and the chunked LM head recompute) at two kinds of measured rate: the rate the
  cut-depth r1v38b runs reached per phase (``r1v38b_cut4_h200x2*.json``: the real widths, 4 layers) and the
  utilisation the SFT throughput runs reached (MFU, converted to hardware-FLOP utilisation where they
  recomputed). The range is low / high over those inputs.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent))  # the checkout's r1v, when run from anywhere

from r1v.runtime import planner  # noqa: E402

GIB = 2**30
PEAK = 989.4e12  # dense bf16 FLOP/s of an H200 (= H100 SXM; r1v/runtime/perf.py PEAK_BF16)
H200_READ = 4.2e12  # B/s: PERF_NOTES.md, first section ("the measured 4.2 TB/s read bandwidth", an H200)
H200_GB = 141.0  # planner.gpu_gb
GPUS = 8
# Not measured in this repository (assumptions, used for small terms only and said so in the JSON):
NVLINK_ALLGATHER = 370e9  # B/s received per GPU in an 8-GPU NVSwitch all-gather of large messages
HOST_COPY = 25e9  # B/s per GPU between host and device (PCIe Gen5 x16, achieved)
HOST_GIB = 560  # the x8 host's memory (device README)


@dataclass(frozen=True)
class Shape:
    """One GRPO step's shape per GPU (the assumptions the time and memory figures share)."""

    prompts: int = 8  # prompts per GPU per step (stage.batch_size)
    group: int = 8  # G (R1V)
    completion: int = 8192  # every completion runs to the budget (random weights always do; hard prompts at T 1.0 do)
    prompt: int = 1400  # mean prompt tokens: 1 image of 5 tiles (4 + thumbnail) = 1,280 + ~120 of text and template
    tiles: int = 5
    plan_prompt: int = 2048  # the planner's prompt (the stage reserves its KV cache for 2,048-token prompts)
    plan_tiles: int = 7  # 7 x 256 = 1,792 image tokens + text ≈ 2,048
    micro: int = 4  # completions per forward/backward (stage.micro_batch_size)
    rows_per_pass: int = 16  # stage.rollout.max_batch_size: rows decoded at once
    beta: float = 0.04  # KL weight, as in the cut runs (R1V does not give it): the reference pass runs

    @property
    def rows(self) -> int:
        return self.prompts * self.group

    @property
    def passes(self) -> int:
        return math.ceil(self.rows / self.rows_per_pass)


def load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def build(depth: int | None = None) -> Any:
    """``model=r1v38b`` on the meta device (cut to ``depth`` layers of encoder and backbone, as the cut runs)."""
    from r1v.model.handle import create_model

    cut = [f"model.backbone.num_hidden_layers={depth}", f"model.vision.num_hidden_layers={depth}"] if depth else []
    return create_model(None, "model=r1v38b", "stage=grpo", *cut, device="meta").vlm


def flop_counter(vlm: Any, trainable: str) -> Any:
    """``r1v/runtime/perf.py``'s counter with ``trainable`` (none | adapter | all) set on the meta model."""
    from r1v.runtime.perf import FlopCounter

    for name in ("vision", "adapter", "backbone"):
        for p in getattr(vlm, name).parameters():
            p.requires_grad_(trainable == "all" or trainable == name)
    return FlopCounter(vlm)


def phase_flops(vlm: Any, trainable: str, rows: int, prompt: int, completion: int, tiles: int,
                ckpt: tuple[str, ...] = ()) -> dict[str, float]:  # fmt: skip
    """Model and hardware FLOPs of one phase over ``rows`` sequences. ``trainable="none"``: a forward only (the
    reference pass). Otherwise forward + backward, with what the backward recomputes added to the hardware count:
    the forward of each checkpointed part, and the LM head's chunks (``stage.logp_chunk``: always recomputed)."""
    fc = flop_counter(vlm, trainable)
    lengths, head_tokens = [prompt + completion] * rows, rows * completion
    model = fc.step(lengths, rows * tiles, head_tokens)
    hw = model
    if trainable != "none":
        fwd = flop_counter(vlm, "none")
        b, v = fwd.shapes["backbone"], fwd.shapes["vision"]
        hw += 2 * fwd.head_params * head_tokens  # the LM head's chunks, recomputed in the backward
        if "backbone" in ckpt:
            hw += 2 * (b.matmul_params - fwd.head_params) * sum(lengths)
            hw += 2 * b.layers * b.attn_width * sum(n * n for n in lengths)
        if "vision" in ckpt:
            n = rows * tiles
            hw += 2 * v.matmul_params * n * fwd.patches + 4 * v.layers * v.attn_width * n * fwd.patches**2
    return {"model": model, "hardware": hw}


def prefill_flops(vlm: Any, rows: int, prompt: int, tiles: int) -> float:
    """The rollout's prefill: vision encoder + adapter + backbone over every row's prompt, logits of the last
    position only. Each of the G rows of a prompt encodes its image again (the engine embeds every row)."""
    return flop_counter(vlm, "none").step([prompt] * rows, rows * tiles, rows)


def decode_weights(vlm: Any) -> tuple[int, int, int]:
    """Bytes a decode step reads per backbone layer, outside the layers (final norm, LM head), and K/V bytes per
    filled column per layer, read off the meta model as ``rollout_floor.py`` counts them."""
    from torch import nn

    lm = vlm.backbone
    layers = max((m for m in lm.modules() if isinstance(m, nn.ModuleList)), key=len)
    per_layer = sum(p.numel() for p in layers[0].parameters()) * 2
    embed = lm.get_input_embeddings().weight
    total = sum(p.numel() for p in lm.parameters() if p is not embed) * 2
    cfg = lm.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return per_layer, total - per_layer * len(layers), 2 * cfg.num_key_value_heads * hd * 2


def measured_decode(floor32: dict[str, Any], batch: int) -> dict[str, float]:
    """The measured 32B decode step (24 layers, H100) at ``batch`` rows: the best engine row against its floor."""
    run = next(r for r in floor32["runs"] if r["batch"] == batch)
    best = min(run["rows"], key=lambda r: r["ms_per_step"])
    return {"batch": batch, "prompt_mean": run["prompt_mean"], "ms": best["ms_per_step"],
            "floor_ms": run["floor"]["ms_per_step"], "share": best["share_of_floor"], "engine": best["engine"],
            "prefill_s": best["prefill_s"], "weight_bytes": run["floor"]["weight_bytes"]}  # fmt: skip


def prefill_rate_32b(vlm: Any, floor32: dict[str, Any], ref: dict[str, float]) -> float:
    """FLOP/s of the measured 32B prefill (24 layers, the batch of ``ref``): its matmuls and causal attention."""
    fc = flop_counter(vlm, "none")
    b = fc.shapes["backbone"]
    per_layer = (b.matmul_params - fc.head_params) / b.layers
    rows, n, layers = ref["batch"], ref["prompt_mean"], floor32["layers"]
    flops = rows * n * 2 * layers * per_layer + 2 * layers * b.attn_width * rows * n * n
    return flops / ref["prefill_s"]


def decode_step_ms(weights: float, kv: float, ref: dict[str, float], layers: int, of_layers: int,
                   bw_ref: float) -> tuple[float, float, float]:  # fmt: skip
    """(floor, low, high) ms of one decode step reading ``weights`` + ``kv`` bytes on an H200.

    The measured step ran ``excess = measured − floor`` above its floor, at ``share = floor / measured``.
    - low: floor + excess, the excess scaled to 64 layers and to the H200's bandwidth. The 1.5B 8k run shows the
      excess staying the same as the filled K/V grows (the step grows at the K/V's bandwidth slope).
    - high: the larger of floor / share (the K/V read as inefficiently as the rest) and floor + the H100's
      excess scaled to 64 layers only (the excess as latency that a faster memory does not shorten).
    """
    floor = (weights + kv) / H200_READ * 1e3
    excess = (ref["ms"] - ref["floor_ms"]) * layers / of_layers
    low = floor + excess * bw_ref / H200_READ
    high = max(floor / ref["share"], floor + excess)
    return floor, low, high


def rollout_s(vlm: Any, s: Shape, ref: dict[str, float], floor32: dict[str, Any], prefill_rate: float,
              gather_bytes: float, gap: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:  # fmt: skip
    """The rollout of ``s.rows`` completions in passes of ``s.rows_per_pass`` with the static engine. ``gap``: what
    the stage's rollout took beyond this model in the cut runs (:func:`cut_rollout_gap`), added once per rollout
    to the low end and once per decode step to the high end."""
    per_layer, outside, kv_col_layer = decode_weights(vlm)
    layers = vlm.backbone.config.num_hidden_layers
    weights = per_layer * layers + outside
    filled = s.prompt + (s.completion - 1) / 2  # mean filled columns per row over the completion
    kv = s.rows_per_pass * filled * layers * kv_col_layer
    floor, low, high = decode_step_ms(weights, kv, ref, layers, floor32["layers"], floor32["read_bandwidth_GBps"] * 1e9)
    prefill = prefill_flops(vlm, s.rows, s.prompt, s.tiles) / prefill_rate
    gather = gather_bytes / NVLINK_ALLGATHER
    steps = s.passes * s.completion
    around = [gap[0], gap[1] * steps]
    return {"rows_per_pass": s.rows_per_pass, "passes": s.passes, "decode_steps": steps,
            "weights_GB_per_step": weights / 1e9, "kv_GB_per_step_mean": kv / 1e9, "floor_ms": floor,
            "ms_per_step": [low, high], "decode_s": [steps * low / 1e3, steps * high / 1e3], "prefill_s": prefill,
            "gather_s": gather, "around_engine_s": around,
            "reward_s": "< 1 (rule rewards on 64 strings in worker processes; inside rollout_s)",
            "s": [steps * low / 1e3 + prefill + gather + around[0],
                  steps * high / 1e3 + prefill + gather + around[1]]}  # fmt: skip


def cut_rollout_gap(cut: Any, ref: dict[str, float], floor32: dict[str, Any], prefill_rate: float,
                    cuts: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The cut runs' rollouts (64 rows of 272 + 1,024 tokens, 4 + 4 layers, 2 GPUs) against the same model: what
    the stage spends around the engine (encoding, the ZeRO-3 gather and hook lifting, graph capture, the engine's
    depth-independent per-step work that the per-layer scaling misses, rewards). Returned as (seconds per rollout
    at the least, seconds per decode step at the most)."""
    s = Shape(prompts=8, completion=1024, prompt=272, tiles=1, rows_per_pass=64)
    gathered = sum(p.numel() for p in cut.parameters()) * 2 / 2  # half the cut model comes from the other GPU
    model = rollout_s(cut, s, ref, floor32, prefill_rate, gathered)
    measured = [r[k]["rollout_s"] for r in cuts.values() for k in r if k.startswith("grpo") and "rollout_s" in r[k]]
    low, high = min(measured) - model["s"][1], max(measured) - model["s"][0]
    return {"measured_s": measured, "model_s": model["s"], "per_rollout_s": low, "per_step_s": high / s.completion}


def layer_rollout_s(vlm: Any, s: Shape, floor32: dict[str, Any], zero: dict[str, Any],
                    prefill_rate: float) -> dict[str, Any]:  # fmt: skip
    """The rollout as the stage runs it when the whole-model gather does not fit (``rollout_gather=layer``,
    ``rollout=hf``): every decode step all-gathers the backbone through DeepSpeed's live hooks inside
    transformers' ``generate()``, all rows at once (the hf engine does not split a batch).
    - low: the larger of the all-gather at NVLink speed and ``generate()``'s own step (measured at 32B, 24 layers,
      B 32: scaled to 64 layers), as if the two overlapped and the hooks cost nothing more;
    - high: their sum plus the live hooks' cost per layer and step measured on r1v_small (2 H200s, ZeRO-3 hooks
      live vs ZeRO-2: ``gpu_grpo_zero.json``), scaled to 64 layers."""
    per_layer, outside, _ = decode_weights(vlm)
    layers = vlm.backbone.config.num_hidden_layers
    gather = (per_layer * layers + outside) * (1 - 1 / GPUS) / NVLINK_ALLGATHER
    run = next(r for r in floor32["runs"] if r["batch"] == 32)
    hf = run["generate_ms_per_step"] / 1e3 * layers / floor32["layers"]
    runs = zero["runs"]
    hooks = (runs["z3_live_hooks"]["rollout"] - runs["z2"]["rollout"]) / runs["z2"]["completion_length_mean"]
    hooks_per_layer = hooks / 28  # r1v_small's backbone: Qwen2.5-1.5B, 28 layers
    low, high = max(gather, hf), gather + hf + hooks_per_layer * layers
    prefill = prefill_flops(vlm, s.rows, s.prompt, s.tiles) / prefill_rate
    return {"rows_per_pass": s.rows, "passes": 1, "decode_steps": s.completion, "gather_s_per_step": gather,
            "generate_s_per_step": hf, "live_hooks_s_per_step": hooks_per_layer * layers,
            "s_per_step": [low, high], "prefill_s": prefill,
            "reward_s": "< 1 (inside rollout_s)",
            "s": [s.completion * low + prefill, s.completion * high + prefill]}  # fmt: skip


def plan(parts: list[Any], s: Shape, trainable: str, ckpt: tuple[str, ...], micro: int, rows: int,
         gather: str = "whole", kv_persists: bool = True) -> dict[str, Any]:  # fmt: skip
    """The planner's per-GPU estimate under ZeRO-3 on 8 H200s, and its two phases: the rollout (the whole-model
    gather, the KV cache) and the update (gradients, optimizer, activations, and the KV cache when
    ``kv_persists``: the static engine keeps its buffers for the next rollout; ``rollout=hf``'s cache goes when
    ``generate()`` returns). The planner's own total counts the cache in both phases."""
    if trainable == "all":
        parts = [replace(p, trainable=p.params) for p in parts]
    st = planner.Settings(zero=3, gpus=GPUS, micro_batch=micro, tiles=s.plan_tiles, ckpt=ckpt, rl=True,
                          group_size=s.group, prompt_len=s.plan_prompt, completion_len=s.completion,
                          rollout_batch=rows, beta=s.beta, reference="trainable" if trainable != "all" else "full",
                          rollout_gather=gather, loss_chunk=1024, gpu_gb=H200_GB)  # fmt: skip
    e = planner.estimate(parts, st)
    base = e.weights + e.reference + e.gradients + e.optimizer + e.other
    out = {k: getattr(e, k) / GIB for k in ("weights", "reference", "gradients", "optimizer", "activations",
                                            "rollout", "gather", "other")}  # fmt: skip
    phases = (base + e.gather + e.rollout, base + e.activations + (e.rollout if kv_persists else 0))
    out = {"gib": {k: round(v, 1) for k, v in out.items()},
           "rollout_phase_gib": round(phases[0] / GIB, 1), "update_phase_gib": round(phases[1] / GIB, 1),
           "planner_total_gib": round(e.total / GIB, 1), "capacity_gib": round(st.capacity / GIB, 1),
           "fits": max(phases) <= st.capacity,
           "knobs": {"zero": 3, "gpus": GPUS, "micro_batch": micro, "prompt_len": s.plan_prompt,
                     "completion_len": s.completion, "tiles": s.plan_tiles, "rollout_batch": rows, "beta": s.beta,
                     "ckpt": list(ckpt), "rollout_gather": gather, "loss_chunk": 1024}}  # fmt: skip
    return out


def cut_rates(cut: Any, runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Hardware FLOP/s per phase that the cut-depth runs reached (per GPU: 8 prompts x G 8 per rank, prompts of
    272 tokens with the shapes-only tokenizer, 1 tile of a 64-px image, 1,024-token completions)."""
    prompt, completion, rows = 272, 1024, 64
    out: dict[str, dict[str, list[float]]] = {}
    for setting, trainable, ckpt in (("adapter", "adapter", ()), ("whole", "all", ("backbone",))):
        ref = phase_flops(cut, "none", rows, prompt, completion, 1)["hardware"]
        upd = phase_flops(cut, trainable, rows, prompt, completion, 1, ckpt)["hardware"]
        measured = [r for r in runs.values() if r.get(f"grpo_{setting}_z3", {}).get("update_s")]
        out[setting] = {"reference": [ref / r[f"grpo_{setting}_z3"]["reference_s"] for r in measured],
                        "update": [upd / r[f"grpo_{setting}_z3"]["update_s"] for r in measured]}  # fmt: skip
    return out


def sft_hfu() -> dict[str, float]:
    """Hardware-FLOP utilisation of the SFT throughput runs: their MFU, ×4/3 for the run that recomputed its
    backbone (full fine-tuning 6·N of model FLOPs + 2·N recomputed; the backbone is most of that 7B's FLOPs)."""
    runs = load("sft_throughput_h100_gpu_vs_z2.json") + load("sft_throughput_h200x2_realistic.json")
    rows = {r["name"]: r for r in runs}
    pick = {"1.5B ZeRO-2, 1 H100": "z2", "1.5B trainer=gpu, 1 H100": "gpu",
            "7B ZeRO-3 + checkpointing, 2 H200": "f7_pack_z3_2g"}  # fmt: skip
    return {label: rows[k]["mfu"] * (4 / 3 if rows[k]["ckpt"] else 1.0) for label, k in pick.items()}


def timed_phase(flops: float, rates: list[float], hfu: dict[str, float]) -> dict[str, Any]:
    """Seconds of a phase of ``flops`` hardware FLOPs at each measured rate; [low, high] over all of them."""
    by = {f"cut4 at {r / 1e12:.0f} TFLOP/s": flops / r for r in rates}
    by.update({f"SFT {k}, HFU {u:.3f}": flops / (PEAK * u) for k, u in hfu.items()})
    return {"hardware_PFLOP": flops / 1e15, "s": [min(by.values()), max(by.values())], "by_input": by}


def setting(vlm: Any, parts: list[Any], s: Shape, trainable: str, ckpt: tuple[str, ...], rollout: dict[str, Any],
            rates: dict[str, list[float]], hfu: dict[str, float], memory: dict[str, Any],
            extra_s: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """One setting's prediction: memory, the four phases, the step and the generated tokens per second per GPU."""
    ref = phase_flops(vlm, "none", s.rows, s.prompt, s.completion, s.tiles)
    upd = phase_flops(vlm, trainable, s.rows, s.prompt, s.completion, s.tiles, ckpt)
    reference = timed_phase(ref["hardware"], rates["reference"], hfu) if s.beta > 0 else None
    update = timed_phase(upd["hardware"], rates["update"], hfu)
    per_mb = sum(p.params for p in parts) * 2 * (1 - 1 / GPUS) / NVLINK_ALLGATHER  # one whole-model all-gather
    micro_batches = math.ceil(s.rows / s.micro)
    # ZeRO-3 fetches every layer for each micro-batch's forward (reference, update) and again for its backward;
    # already inside the measured rates (cut runs, the 7B ZeRO-3 run), so not added: a check that it is small
    collectives = per_mb * micro_batches * (3 if s.beta > 0 else 2)
    lo = rollout["s"][0] + (reference["s"][0] if reference else 0) + update["s"][0] + extra_s
    hi = rollout["s"][1] + (reference["s"][1] if reference else 0) + update["s"][1] + extra_s
    generated = s.rows * s.completion
    return {"shape": asdict(s) | {"rows": s.rows}, "trainable": trainable, "activation_checkpointing": list(ckpt),
            "memory": memory, "rollout": rollout, "reference": reference, "update": update,
            "model_PFLOP": {"reference": ref["model"] / 1e15, "update": upd["model"] / 1e15},
            "zero3_collectives_s_if_not_overlapped": collectives, "extra_s": extra_s,
            "step_s": [lo, hi], "generated_tokens_per_step": generated,
            "generated_tokens_per_s_per_gpu": [generated / hi, generated / lo]}  # fmt: skip


def fmt(r: list[float] | None, digits: int = 0) -> str:
    if r is None:
        return "—"
    return f"{r[0]:,.{digits}f}–{r[1]:,.{digits}f}"


ASSUMPTIONS = [
    "8 H200 (141 GB) in one host, ZeRO-3 for both settings (the cut runs' strategy); bf16 dense peak 989.4 TFLOP/s; "
    "read bandwidth 4.2 TB/s (PERF_NOTES, measured on an H200)",
    "per GPU per step: 8 prompts x G 8 = 64 completions (R1V3 as implemented: 1 prompt x G 8, all that fits), every "
    "one 8,192 tokens (the budget: random weights never stop early, and a pass waits for its longest row anyway); "
    "prompts of 1,400 tokens = 1 image of 5 tiles (the measured 32B rollout's prompt mean); memory planned at "
    "2,048-token prompts of 7 tiles (the stage reserves its KV cache for 2,048-token prompts)",
    "β = 0.04 (reference pass on, as in the cut runs; R1V gives no KL weight: β = 0 drops the reference column); "
    "μ = 1 and no replay buffer: no old-log-prob pass; T 1.0, top-p 1 (R1V): no top-p kernel, so the measured 32B "
    "step (T 0.6 / top-p 0.95) is if anything slow by that kernel's share",
    "rollout=static with split-K attention and split-K GEMMs (stage.rollout.split_k=true, the measured 32B engine; "
    "the default, off, was not measured at 32B); a decode step's distance above its floor as measured at 32B "
    "(24 layers, B 32, H100: 83% of floor), scaled to 64 layers and to the H200 (low: the excess shrinks with the "
    "bandwidth; high: it does not, or the K/V is read at the same 83%); prefill (vision encoder included) at the "
    "32B prefill's measured FLOP rate; what the cut runs' rollouts spent beyond that model (inputs: "
    "cut4_rollout_vs_model) added once per rollout (low) or once per decode step (high)",
    "reference / update: hardware FLOPs (model FLOPs as r1v/runtime/perf.py counts them, plus the recomputed forward "
    "of checkpointed parts and of the chunked LM head) at (a) the rate each phase reached in the cut-depth r1v38b "
    "runs (full widths, 4 + 4 layers, 1k completions, 2 H200s, ZeRO-3) and (b) the SFT runs' utilisation (MFU; "
    "x4/3 for the run that recomputed its backbone); low / high over all of them. Nothing subtracted from the cut "
    "runs for depth-independent work: their LM head and vision encoder are in their FLOPs, so they scale by their "
    "own FLOPs; per-micro-batch fixed costs were not separated (they scale with the FLOPs here, a high-side bias)",
    f"not measured here, used for small terms only (the gather per rollout, the collectives check, host copies) and "
    f"for the layer-by-layer rollout: NVLink all-gather {NVLINK_ALLGATHER / 1e9:.0f} GB/s received per GPU, host "
    f"copies {HOST_COPY / 1e9:.0f} GB/s per GPU",
    "the layer-by-layer rollout (R1V3 as implemented): transformers' generate() step measured at 32B (24 layers, "
    "B 32, H100) scaled to 64 layers; the all-gather of the backbone per step; the live ZeRO-3 hooks' cost per "
    "layer and step measured on r1v_small (2 H200s) scaled to 64 layers (high end only)",
    "first step not included (compilation, graph capture): the cut runs' first steps took 20-23 s more rollout, "
    "1-2 s more reference, 2-3 s more update",
    "reward: rule rewards (accuracy + format) on 64 strings in 2 worker processes: < 1 s, counted inside rollout",
]


def main() -> None:
    from r1v.cli.describe import model_parts

    floor32, floor8k = load("rollout_floor_32b_24l_h100.json"), load("rollout_floor_1p5b_8k_h100.json")
    cuts = {"attempt 4": load("r1v38b_cut4_h200x2.json"), "attempt 5": load("r1v38b_cut4_h200x2_expandable.json")}
    zero = load("gpu_grpo_zero.json")
    vlm, cut = build(), build(4)
    s = Shape()
    parts = model_parts(vlm, s.plan_tiles)
    hfu, rates = sft_hfu(), cut_rates(cut, cuts)
    # the engine's measured step at B 32 (nearest the 16 rows per pass); the prefill rate at B 64
    ref32, ref64 = measured_decode(floor32, 32), measured_decode(floor32, 64)
    prefill_rate = prefill_rate_32b(vlm, floor32, ref64)
    gap = cut_rollout_gap(cut, ref32, floor32, prefill_rate, cuts)
    per_layer, outside, _ = decode_weights(vlm)
    seg = next(r for r in floor8k["runs"][0]["rows"] if r["knobs"].get("attention") == "triton")["segments"]
    excess8k = {k: v["ms_per_step"] - v["floor_ms"] for k, v in seg.items()}
    whole_bytes = sum(p.params for p in parts) * 2 * (1 - 1 / GPUS)  # what a rank gathers for the static engine
    settings: dict[str, Any] = {}

    # R1V, adapter only: the backbone checkpointed (without it, 8k sequences keep hundreds of GiB of activations)
    ckpt = ("backbone",)
    mem = plan(parts, s, "adapter", ckpt, s.micro, s.rows_per_pass)
    mem["without_checkpointing"] = plan(parts, s, "adapter", (), s.micro, s.rows_per_pass)["update_phase_gib"]
    mem["all_64_rows_in_one_pass"] = plan(parts, s, "adapter", ckpt, s.micro, s.rows)["rollout_phase_gib"]
    roll = rollout_s(vlm, s, ref32, floor32, prefill_rate, whole_bytes, (gap["per_rollout_s"], gap["per_step_s"]))
    a = settings["R1V adapter-only"] = setting(vlm, parts, s, "adapter", ckpt, roll, rates["adapter"], hfu, mem)
    a["overrides"] = (
        "model=r1v38b stage=grpo trainer=deepspeed_z3 trainer.devices=8 stage.batch_size=8 "
        "stage.group_size=8 stage.max_new_tokens=8192 stage.micro_batch_size=4 "
        "stage.policy_loss.beta=0.04 stage.activation_checkpointing=[backbone] "
        "stage.rollout_gather=whole stage.rollout.max_batch_size=16 stage.rollout.split_k=true"
    )

    # R1V3, whole model, as the code runs it: the gathered model does not fit beside the optimizer states, so
    # rollouts go layer by layer with rollout=hf, every row at once; only 1 prompt x G 8 per GPU fits then
    ckpt3 = ("vision", "backbone")
    s3 = replace(s, prompts=1, micro=1, rows_per_pass=8)
    mem3 = plan(parts, s3, "all", ckpt3, 1, s3.rows, gather="layer", kv_persists=False)
    whole3 = plan(parts, s3, "all", ckpt3, 1, s3.rows)
    mem3["whole_gather_without_kv_cache"] = round(whole3["rollout_phase_gib"] - whole3["gib"]["rollout"], 1)
    mem3["layer_gather_8_prompts"] = plan(parts, s, "all", ckpt3, 1, s.rows, gather="layer")["rollout_phase_gib"]
    mem3["layer_gather_2_prompts"] = plan(parts, replace(s, prompts=2), "all", ckpt3, 1, 16,
                                          gather="layer")["rollout_phase_gib"]  # fmt: skip
    roll3 = layer_rollout_s(vlm, s3, floor32, zero, prefill_rate)
    w = settings["R1V3 whole-model, as implemented"] = setting(vlm, parts, s3, "all", ckpt3, roll3, rates["whole"],
                                                               hfu, mem3)  # fmt: skip
    w["overrides"] = (
        "model=r1v38b stage=grpo trainer=deepspeed_z3 trainer.devices=8 "
        "stage.trainable=[vision,adapter,backbone] stage.batch_size=1 stage.group_size=8 "
        "stage.max_new_tokens=8192 stage.micro_batch_size=1 stage.policy_loss.beta=0.04 "
        "stage.activation_checkpointing=[vision,backbone]  (rollout_gather auto -> layer, rollout=hf)"
    )

    # R1V3 with what the code lacks: the optimizer states on the host during the rollout, the gradient buffers and
    # the KV cache freed between phases; then the whole-model gather and the static engine fit, 8 prompts x G 8
    s3b = replace(s, micro=2)
    full = plan(parts, s3b, "all", ckpt3, 2, s3b.rows_per_pass)
    g = full["gib"]
    base = g["weights"] + g["reference"] + g["other"]
    mem3b = {"gib": g, "rollout_phase_gib": round(base + g["gather"] + g["rollout"], 1),
             "update_phase_gib": round(base + g["gradients"] + g["optimizer"] + g["activations"], 1),
             "capacity_gib": full["capacity_gib"], "knobs": full["knobs"],
             "host_gib": round(GPUS * g["optimizer"] + sum(p.params for p in parts) * 2 / GIB, 1),
             "host_note": "8 ranks' optimizer states + the reference's initial values (kept on the host)",
             "host_capacity_gib": HOST_GIB}  # fmt: skip
    mem3b["fits"] = max(mem3b["rollout_phase_gib"], mem3b["update_phase_gib"]) <= full["capacity_gib"]
    moves = 2 * g["optimizer"] * GIB / HOST_COPY  # to the host before the rollout, back before the update
    roll3b = rollout_s(vlm, s3b, ref32, floor32, prefill_rate, whole_bytes, (gap["per_rollout_s"], gap["per_step_s"]))
    settings["R1V3 whole, optimizer off GPU in rollout (not built)"] = setting(
        vlm, parts, s3b, "all", ckpt3, roll3b, rates["whole"], hfu, mem3b, extra_s=moves
    )

    vision_prefill = (
        prefill_flops(vlm, s.rows, s.prompt, s.tiles) - prefill_flops(vlm, s.rows, s.prompt, 0)
    ) / prefill_rate
    with_images = phase_flops(vlm, "none", s.rows, s.prompt, s.completion, s.tiles)["model"]
    vision_share = 1 - phase_flops(vlm, "none", s.rows, s.prompt, s.completion, 0)["model"] / with_images
    findings = [
        f"R1V at 8k needs backbone checkpointing: without it the update phase plans {mem['without_checkpointing']} "
        f"GiB per GPU at micro-batch 4 (9.6k-token sequences through 64 layers); with it "
        f"{max(mem['rollout_phase_gib'], mem['update_phase_gib'])} GiB",
        f"64 rows of 8k cannot decode at once beside the gathered model ({mem['all_64_rows_in_one_pass']} GiB in the "
        f"rollout phase): 4 passes of 16 rows ({mem['rollout_phase_gib']} GiB). stage.rollout_gather=auto reserves "
        "the KV cache of stage.rollout.max_batch_size rows (it reserved every row of the batch before this estimate "
        "found it, and would have picked 'layer': rollout=hf, which does not split a batch, out of memory)",
        f"R1V3 (whole model): the gathered model does not fit beside the optimizer states even with no KV cache "
        f"({mem3['whole_gather_without_kv_cache']} GiB); the layer-by-layer fallback decodes every row at once "
        f"(8 prompts: {mem3['layer_gather_8_prompts']} GiB, 2 prompts: {mem3['layer_gather_2_prompts']} GiB), so only "
        f"1 prompt x G 8 per GPU fits ({mem3['rollout_phase_gib']} GiB) and each decode step all-gathers the "
        f"backbone: {fmt(w['rollout']['s'])} s of rollout for {s3.rows * s.completion:,} tokens per GPU",
        f"each of the G rows of a prompt encodes its image again (rollout prefill, reference, update); in R1V the "
        f"vision encoder is frozen, so its output could be computed once per prompt: the encoder is "
        f"{vision_prefill:.0f} s of the prefill and {vision_share:.0%} of the reference's FLOPs",
        f"ZeRO-3's per-micro-batch all-gathers are small against compute at these sizes (adapter-only: "
        f"{a['zero3_collectives_s_if_not_overlapped']:.0f} s per step if none overlapped)",
    ]
    headline = {name: {"gib_per_gpu": max(r["memory"]["rollout_phase_gib"], r["memory"]["update_phase_gib"]),
                       "rollout_s": r["rollout"]["s"], "reference_s": r["reference"]["s"], "update_s": r["update"]["s"],
                       "step_s": r["step_s"], "generated_tokens_per_s_per_gpu": r["generated_tokens_per_s_per_gpu"]}
                for name, r in settings.items()}  # fmt: skip
    out = {
        "what": "paper estimate of R1V's GRPO step at 38B (model=r1v38b) on 8 H200s, per GPU; no GPU was used",
        "command": "python benchmarks/estimate_38b_grpo.py",
        "headline": headline,
        "assumptions": ASSUMPTIONS,
        "findings": findings,
        "inputs": {
            "rollout_floor_32b_24l_h100.json": {
                "B32": ref32,
                "B64": ref64,
                "weight_bytes_24_layers_check": per_layer * 24 + outside,
                "prefill_TFLOP_per_s": prefill_rate / 1e12,
            },
            "rollout_floor_1p5b_8k_h100.json": {"excess_above_floor_ms": excess8k},
            "r1v38b_cut4 (2 H200, ZeRO-3, per rank)": {
                k: {
                    n: {p: v[n].get(f"{p}_s") for p in ("rollout", "reference", "update")}
                    for n in v
                    if n.startswith("grpo")
                }
                for k, v in cuts.items()
            },
            "cut4_rollout_vs_model": gap,
            "cut4_hardware_TFLOP_per_s": {
                k: {p: [x / 1e12 for x in v] for p, v in d.items()} for k, d in rates.items()
            },
            "sft_hardware_flop_utilisation": hfu,
            "gpu_grpo_zero.json (live ZeRO-3 hooks, r1v_small, 2 H200)": zero["runs"]["z3_live_hooks"],
        },
        "settings": settings,
    }
    (RESULTS / "estimate_38b_grpo.json").write_text(json.dumps(out, indent=1, default=float) + "\n")

    print(f"decode step, 64 layers, {s.rows_per_pass} rows, 8k (H200): floor {roll['floor_ms']:.1f} ms (weights "
          f"{roll['weights_GB_per_step']:.1f} GB + mean K/V {roll['kv_GB_per_step_mean']:.1f} GB at 4.2 TB/s), "
          f"predicted {fmt(roll['ms_per_step'], 1)} ms. Measured: 32B, 24 layers {ref32['ms']:.2f} ms = "
          f"{ref32['share']:.1%} of floor (H100, B 32); 1.5B at 8k "
          f"{' and '.join(f'{v:.2f}' for v in excess8k.values())} ms above floor "
          "(steps 1-1k and 1k-8k: the excess does not grow with the K/V)")  # fmt: skip
    print(f"cut4 rollouts {', '.join(f'{x:.2f}' for x in gap['measured_s'])} s against {fmt(gap['model_s'], 2)} s "
          f"modelled; prefill {prefill_rate / 1e12:.0f} TFLOP/s; cut4 hardware TFLOP/s "
          + "; ".join(f"{k} {p} {', '.join(f'{x / 1e12:.0f}' for x in v)}"
                      for k, d in rates.items() for p, v in d.items())
          + "; SFT HFU " + ", ".join(f"{u:.3f}" for u in hfu.values()))  # fmt: skip
    print(f"{'setting (per GPU)':<52} {'GiB':>11} {'rollout s':>13} {'reference s':>11} {'update s':>11} "
          f"{'step s':>13} {'gen tok/s':>9}")  # fmt: skip
    for name, h in headline.items():
        cap = settings[name]["memory"]["capacity_gib"]
        print(f"{name[:52]:<52} {h['gib_per_gpu']:>6.1f}/{cap:<4.0f} {fmt(h['rollout_s']):>13} "
              f"{fmt(h['reference_s']):>11} {fmt(h['update_s']):>11} {fmt(h['step_s']):>13} "
              f"{fmt(h['generated_tokens_per_s_per_gpu']):>9}")  # fmt: skip
    print("reward: < 1 s per step (inside rollout). Findings:")
    for f in findings:
        print(f"- {f}")
    print(f"wrote {RESULTS / 'estimate_38b_grpo.json'}")


if __name__ == "__main__":
    main()

"""Value checks at composition, before anything is built: a plugin knob's value against its factory's type
annotations, and a stage / trainer / distill / evaluation setting against its allowed range (:data:`RANGES`).

Types of the stage-like settings come from their YAML defaults (:func:`r1v.core.config.check_types`); YAML cannot
say that a learning rate is positive, so the ranges live here, in one table keyed by the setting's dotted name.
One table (rather than a check in each stage) because the stages read the same settings in many files, and a
test (``tests/unit/test_value_checks.py``) holds every numeric default of ``conf/stage/*.yaml`` to having a
range here or a reason in :data:`EXEMPT`, so a new setting gets a range when it is added.
"""

from __future__ import annotations

import collections.abc
import inspect
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from r1v.core.errors import ConfigError
from r1v.core.registry import did_you_mean

# setting -> allowed values: "> 0", ">= 1" (comparisons), "[0, 1)" (an interval), "-1" (one value), "null",
# joined by " or ", then optionally "; what it means" for the error line. A list value (betas, lrs, taus) must
# have each element in range. A null is allowed where the spec says "or null" or where the YAML default is null
# (it then means "not set").
RANGES: dict[str, str] = {
    # optimisation (every training stage)
    "stage.lr": ">= 0; 0: the weights stay as they are",
    "stage.lrs": "> 0",
    "stage.weight_decay": ">= 0",
    "stage.warmup_ratio": "[0, 1); a share of max_steps",
    "stage.betas": "[0, 1)",
    "stage.batch_size": ">= 1",
    "stage.max_steps": ">= 1 or -1; optimizer steps, -1: no step limit",
    "stage.accumulate_grad_batches": ">= 1; batches per optimizer step",
    "stage.gradient_clip_val": ">= 0 or null; 0 or null: no clipping",
    "stage.clip_grad_norm": ">= 0 or null; 0 or null: no clipping",
    "stage.loss_chunk_tokens": ">= 0; 0: transformers' loss over the full logits",
    "stage.text_teacher": ">= 0; 0: off (the answer's loss only)",
    "stage.pack_max_tokens": ">= 1",
    "stage.logp_chunk": ">= 1",
    "stage.max_nonfinite": ">= 1; non-finite steps in a row before the run stops",
    # validation, checkpoints, logging
    "stage.val_every": ">= 1",
    "stage.val_generate": ">= 0; 0: no generation at validation",
    "stage.max_new_tokens": ">= 1",
    "stage.ckpt_every": ">= 0; 0: no checkpoints",
    "stage.log_every": ">= 1",
    # GRPO
    "stage.group_size": ">= 2; GRPO's advantage is relative to the group, 0 for a group of one; R1V: 8",
    "stage.mu": ">= 1",
    "stage.micro_batch_size": ">= 1",
    "stage.policy_loss.eps_low": "[0, 1)",
    "stage.policy_loss.eps_high": ">= 0",
    "stage.policy_loss.beta": ">= 0",
    "stage.policy_loss.max_len": ">= 1 or null; loss_agg=constant needs it",
    "stage.rollout.temperature": "> 0",
    "stage.head.temperature": "> 0; the reward model's softmin over completion tokens",
    "stage.flawed_weight": "> 0; the process reward model's loss weight of a flawed step (a sound one weighs 1)",
    "stage.rollout.top_p": "(0, 1]; 1: no nucleus cut",
    "stage.rollout.max_batch_size": ">= 1 or null; null: the whole rollout batch in one pass",
    "stage.rollout.window": ">= 1",
    "stage.dynamic_sampling.max_refills": ">= 0",
    "stage.ssb.capacity": ">= 1",
    "stage.ssb.prefilter_pool": ">= 1",
    "stage.completions_prompts": ">= 1",
    "stage.completions_every": ">= 0; 0: off",
    "stage.logp_probe": ">= 0; 0: off",
    "stage.reward_timeout_s": "> 0",
    "stage.reward_workers": ">= 1",
    "stage.max_reward_failure_share": "[0, 1] or null; null: never stop",
    # iterative SFT
    "stage.taus": "[0, 5]; R1V's 0–5 reward-model scale",
    "stage.epochs_per_round": ">= 1",
    "stage.max_steps_per_round": ">= 1",
    "stage.rm.quantiles": "(0, 1); cut points of the quantile calibration",
    "stage.errors.pool": ">= 1",
    "stage.errors.min_score": "[0, 5] or null; null: every wrong answer enters, as in R1V",
    "stage.errors.max_new_tokens": ">= 1",
    "stage.errors.batch_size": ">= 1",
    # preference stages
    "stage.k": ">= 2; a pair needs at least 2 sampled responses per prompt",
    "stage.threshold": ">= 0",
    "stage.limit": ">= 1 or null; null: every prompt",
    "stage.beta": "> 0; the implicit reward β·log(π/π_ref) needs β > 0, MPO: 0.1",
    "stage.weights.dpo": ">= 0",
    "stage.weights.bco": ">= 0",
    "stage.weights.nll": ">= 0",
    # distillation and in-training evaluation
    "distill.scorer_timeout_s": "> 0",
    "distill.max_new_tokens": ">= 1",
    "distill.batch_size": ">= 1",
    "distill.limit": ">= 1 or null; null: every sample",
    "evaluation.every_n_steps": ">= 1",
    "evaluation.limit": ">= 1 or null; null: every question",
    "evaluation.max_new_tokens": ">= 1",
    "evaluation.batch_size": ">= 1",
    # the Lightning trainer (integers only: devices=auto is Lightning's own)
    "trainer.devices": ">= 1 or -1; -1: every visible device",
    "trainer.num_nodes": ">= 1",
    "trainer.log_every_n_steps": ">= 1",
    "trainer.strategy.stage": "[0, 3]",
    "trainer.strategy.allgather_bucket_size": ">= 1",
    "trainer.strategy.reduce_bucket_size": ">= 1",
}
LORA_NODE = "a mapping (null: no LoRA), checked whole by check_lora"
LORA_KEYS = ("r", "alpha", "dropout", "targets")
# "<setting>@<option>": a setting whose range does not apply in that option, and why
EXEMPT: dict[str, str] = {
    "stage.max_steps@iterative_sft": "each round sets its own step count from its data (max_steps_per_round caps it)",
    "stage.lora@sft": LORA_NODE,
    "stage.lora@iterative_sft": LORA_NODE,
    "stage.lora@grpo": LORA_NODE,
    "stage.lora@mpo": LORA_NODE,
}

_CMP = re.compile(r"^(>=|<=|>|<)\s*(-?[\d.e+-]+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])])$")


def _allows_one(part: str, v: float) -> bool:
    if m := _CMP.match(part):
        op, x = m[1], float(m[2])
        return {">": v > x, ">=": v >= x, "<": v < x, "<=": v <= x}[op]
    if m := _INTERVAL.match(part):
        lo, hi = float(m[2]), float(m[3])
        return (v >= lo if m[1] == "[" else v > lo) and (v <= hi if m[4] == "]" else v < hi)
    return v == float(part)


def allows(spec: str, value: Any) -> bool:
    """Whether ``value`` (a number, or None) is in ``spec`` (see :data:`RANGES`)."""
    parts = [p.strip() for p in spec.split(";")[0].split(" or ")]
    if value is None:
        return "null" in parts
    return any(_allows_one(p, float(value)) for p in parts if p != "null")


def say(spec: str) -> str:
    """The spec as an error line says it: '[0, 1) or null; null: off' -> 'in [0, 1) or null (null: off)'."""
    values, _, note = spec.partition(";")
    said = " or ".join(f"in {p}" if _INTERVAL.match(p) else p for p in (q.strip() for q in values.split(" or ")))
    return f"{said} ({note.strip()})" if note.strip() else said


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_range(dotted: str, value: Any, default: Any = None, option: str | None = None) -> None:
    """Raise one line when the setting ``dotted`` has a value outside its :data:`RANGES` entry. Values that are
    not numbers (or lists of numbers) are left to the type check, except a string where a typed node's default is
    null (the YAML gives no type there, the range does); a null is allowed when the default is null."""
    if dotted == "stage.lora":
        check_lora(value)
        return
    spec = RANGES.get(dotted)
    if spec is None or (option and f"{dotted}@{option}" in EXEMPT):
        return
    if value is None:
        if default is None or allows(spec, None):
            return
        raise ConfigError(f"{dotted}=null: must be {say(spec)} (null is not allowed here)")
    if isinstance(value, str) and default is None and option:  # a typed node's null default: its range is its type
        raise ConfigError(f"{dotted}={value!r}: must be {say(spec)}")
    if isinstance(value, list | tuple):
        bad = [v for v in value if _is_number(v) and not allows(spec, v)]
        if bad:
            raise ConfigError(f"{dotted}={list(value)!r}: each value must be {say(spec)}; {bad[0]!r} is not")
    elif _is_number(value) and not allows(spec, value):
        raise ConfigError(f"{dotted}={value!r}: must be {say(spec)}")


def check_lora(node: Any) -> dict[str, Any] | None:
    """``stage.lora`` (null: no LoRA) with its defaults filled in — r 64, alpha 2·r, dropout 0.05, targets
    [backbone] — or one line naming the bad key or value. Whether the targets match modules and the rank fits
    their width is checked on the built model (:func:`r1v.model.lora.target_modules`)."""
    if node is None or node is False:
        return None
    if not isinstance(node, Mapping):
        raise ConfigError(f"stage.lora={node!r}: must be a mapping such as {{r: 64, alpha: 128, dropout: 0.05, "
                          "targets: [backbone]}, or null for no LoRA")  # fmt: skip
    unknown = sorted(set(node) - set(LORA_KEYS))
    if unknown:
        raise ConfigError(f"stage.lora.{unknown[0]}: not a LoRA setting (allowed: {', '.join(LORA_KEYS)})"
                          f"{did_you_mean(unknown[0], LORA_KEYS)}")  # fmt: skip
    r = node.get("r", 64)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"stage.lora.r={r!r}: must be a whole number ≥ 1 (the rank of the low-rank update)")
    alpha = node.get("alpha", 2 * r)  # α = 2r: the scale α/r = 2 of the common recipes
    if isinstance(alpha, bool) or not _is_number(alpha) or alpha <= 0:
        raise ConfigError(f"stage.lora.alpha={alpha!r}: must be a number > 0 (the update is scaled by alpha/r)")
    dropout = node.get("dropout", 0.05)
    if isinstance(dropout, bool) or not _is_number(dropout) or not 0 <= dropout < 1:
        raise ConfigError(f"stage.lora.dropout={dropout!r}: must be in [0, 1)")
    targets = node.get("targets", ["backbone"])
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list | tuple) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"stage.lora.targets={targets!r}: must be a non-empty list of backbone, vision or "
                          "module-name globs")  # fmt: skip
    return {"r": int(r), "alpha": float(alpha), "dropout": float(dropout), "targets": list(targets)}


def check_untyped_ranges(cfg: Mapping[str, Any], nodes: tuple[str, ...] = ("trainer",)) -> None:
    """The ranges of nodes without a YAML type schema (the Lightning trainer), null always allowed."""
    for dotted in RANGES:
        if dotted.split(".")[0] not in nodes:
            continue
        node: Any = cfg
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        check_range(dotted, node)


# ---- plugin knobs against their factory's annotations ----


def factory_hints(factory: Any) -> dict[str, Any]:
    """The factory's parameter annotations (a class: its ``__init__``'s); {} when they cannot be resolved (a
    third-party factory's forward references): its knobs then go unchecked, as an unannotated one's do."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return {k: v for k, v in typing.get_type_hints(target).items() if k != "return"}
    except Exception:  # NameError, TypeError from odd annotations: not the user's mistake, so no error here
        return {}


def fits(value: Any, hint: Any) -> bool:
    """Whether a YAML/command-line value can be passed where ``hint`` is annotated (an int stands for a float;
    constructs it cannot judge — Callable, TypeVar, other classes than the plain ones — are allowed)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object or isinstance(hint, typing.TypeVar):
        return True
    if origin is typing.Annotated:
        return fits(value, args[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(fits(value, a) for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(fits(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return _is_number(value)
    if hint is str:
        return isinstance(value, str)
    if inspect.isclass(hint) and issubclass(hint, PurePath | os.PathLike):
        return isinstance(value, str | PurePath)
    return True


def describe(hint: Any) -> str:
    """``int | None`` -> 'an integer or null'; ``Literal['v1', 'v2']`` -> "one of 'v1', 'v2'"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return describe(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable):
        return f"a list ({'each ' + describe(args[0]) if args else 'any values'})"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_knob_values(entry: Any, knobs: Mapping[str, Any], where: str) -> None:
    """Each knob's value fits its factory annotation; a null also where the factory's own default is None."""
    hints = factory_hints(entry.factory)
    params = inspect.signature(entry.factory).parameters
    for key, value in knobs.items():
        if key not in hints or fits(value, hints[key]):
            continue
        if value is None and key in params and params[key].default is None:
            continue
        hint = hints[key]
        hint_args = typing.get_args(hint)
        literal = typing.get_origin(hint) is typing.Literal
        suggestion = did_you_mean(value, [str(a) for a in hint_args]) if literal and isinstance(value, str) else ""
        raise ConfigError(f"{where}.{key}={value!r}: expected {describe(hint)} ({entry.kind} '{entry.name}')"
                          f"{suggestion}")  # fmt: skip

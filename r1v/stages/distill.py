"""``stage=distill``: R1V's Adaptive-Length Chain-of-Thought Distillation (AL-CoTD).

For every sample of the training set (or its first ``distill.limit``):

1. **QDAM / VTIA scores** — the scorer plugins of ``distill.scorers``, each tagged with its group
   (``vision``: clarity, image necessity; ``text``: quality, difficulty, reasoning demand;
   ``integration``: VTIA). A scorer that fails on a sample is counted; the sample is kept with the
   data-set mean for that part (``on_scorer_error=keep``), dropped (``drop``) or stops the run
   (``error``).
2. **Normalisation** — each part min-max over the data set, a group is the mean of its parts, and
   DRLC's Ŝv, Ŝt, ŜI are the groups min-max normalised again (R1V: "min-max normalised over the
   data set").
3. **Length control** — the ``distill.length`` controller (DRLC by default) turns each sample's
   scores into its own sampling knobs (DRLC: the repetition penalty P), which the rollout engine
   applies row by row.
4. **Self-distillation** — the current model (``checkpoint=``) writes a ``<think>`` chain per sample;
   the answer is checked (math-verify); correct chains are kept, wrong ones go to the reviser
   (``rationalize``: STaR-style with the answer as hint, or ``openai_judge``), and what the reviser
   cannot fix is dropped.
5. **Output** — ``<run>/distilled.jsonl`` (the SFT data set, the documented JSONL schema; each row's
   ``meta.distill`` holds raw and normalised scores, P, status kept/revised and lengths),
   ``<run>/distill_dropped.jsonl`` (what was not kept, and why) and ``<run>/distill.json`` (summary).
   Train on it with ``stage=sft data=jsonl data.train=<run>/distilled.jsonl``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from r1v.core.config import build_plugin
from r1v.core.interfaces import ScoreContext
from r1v.core.registry import Registry, get_registry
from r1v.data.datasets import image_refs
from r1v.evaluation.answers import chain_of, equivalent, extract_answer
from r1v.evaluation.sample_scores import (
    ISOLATIONS,
    SCORER_POLICIES,
    ScorerPool,
    ScoringError,
    batches,
    impute_mean,
    minmax,
    run_scorer,
)
from r1v.runtime.runs import write_json_atomic

log = logging.getLogger(__name__)
GROUPS = ("vision", "text", "integration")


@dataclass
class DistillPlugins:
    scorers: dict[str, tuple[str, Any]]  # part -> (group, scorer)
    length: Any
    reviser: Any
    engine: Any


@dataclass
class DistillResult:
    records: list[dict[str, Any]]  # one per input sample, in input order
    summary: dict[str, Any] = field(default_factory=dict)

    def chains(self) -> dict[int, str]:
        """Dataset index -> new chain, for the kept and revised samples."""
        return {r["index"]: r["chain"] for r in self.records if r["status"] in ("kept", "revised")}


def build_plugins(dcfg: Mapping[str, Any], registry: Registry | None = None) -> DistillPlugins:
    """The scorers, length controller, reviser and rollout engine named in the ``distill`` config.
    Judge-backed plugins check their endpoint here, before anything is generated."""
    registry = registry or get_registry()
    scorers = {part: (str(node["group"]), build_plugin(registry, "scorer", node, f"distill.scorers.{part}",
                                                       ("name", "group")))
               for part, node in (dcfg.get("scorers") or {}).items()}  # fmt: skip
    return DistillPlugins(scorers, build_plugin(registry, "length", dcfg["length"], "distill.length"),
                          build_plugin(registry, "reviser", dcfg["reviser"], "distill.reviser"),
                          build_plugin(registry, "rollout", dcfg["rollout"], "distill.rollout"))  # fmt: skip


def score_dataset(dataset: Any, indices: list[int], plugins: DistillPlugins, ctx: ScoreContext, policy: str,
                  batch_size: int, timeout: float | None = None, isolation: str = "inline",
                  ) -> tuple[dict[str, list[float | None]], Counter[str]]:  # fmt: skip
    """Raw part scores for ``indices`` (None where a scorer failed) and failure counts per part."""
    if policy not in SCORER_POLICIES:
        raise ScoringError(f"distill.on_scorer_error: '{policy}' is not allowed (use {', '.join(SCORER_POLICIES)})")
    if isolation not in ISOLATIONS:
        raise ScoringError(f"distill.scorer_isolation: '{isolation}' is not allowed (use {', '.join(ISOLATIONS)})")
    raw: dict[str, list[float | None]] = {part: [] for part in plugins.scorers}
    failures: Counter[str] = Counter()
    pool = ScorerPool() if isolation == "process" else None
    try:
        for chunk in batches(indices, batch_size):
            samples = [dataset[i] for i in chunk]
            for part, (_, scorer) in plugins.scorers.items():
                raw[part].extend(run_scorer(part, scorer, samples, ctx, failures, policy, timeout, pool))
    finally:
        if pool is not None:
            pool.close()
    return raw, failures


def group_scores(raw: Mapping[str, list[float | None]], groups: Mapping[str, str], n: int) -> dict[str, list[float]]:
    """Ŝv, Ŝt, ŜI per sample: parts min-max normalised (missing → mean), averaged by group, normalised again."""
    parts = {part: impute_mean(minmax(col)) for part, col in raw.items()}
    out = {}
    for g in GROUPS:
        members = [parts[p] for p, pg in groups.items() if pg == g]
        col = [mean(m[i] for m in members) for i in range(n)] if members else [0.5] * n
        out[g] = [0.5 if v is None else v for v in minmax(col)]
    return out


def _length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    s = sorted(values)
    return {"n": len(s), "mean": round(mean(s), 2), "median": s[len(s) // 2], "max": s[-1]}


def distill(dataset: Any, indices: list[int], ctx: ScoreContext, plugins: DistillPlugins, dcfg: Mapping[str, Any],
            out_dir: Path) -> DistillResult:  # fmt: skip
    """Run AL-CoTD over ``dataset[indices]`` with ``ctx.model``; write the data set into ``out_dir``."""
    from r1v.core.interfaces import sampling_params

    policy = str(dcfg.get("on_scorer_error", "keep"))
    batch_size = int(dcfg.get("batch_size", 32))
    raw, failures = score_dataset(dataset, indices, plugins, ctx, policy, batch_size,
                                  dcfg.get("scorer_timeout_s"), str(dcfg["scorer_isolation"]))  # fmt: skip
    n = len(indices)
    groups = group_scores(raw, {p: g for p, (g, _) in plugins.scorers.items()}, n)
    failed_parts = [[p for p in raw if raw[p][k] is None] for k in range(n)]
    params = [sampling_params(plugins.length, {g: groups[g][k] for g in GROUPS}) for k in range(n)]

    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    tok = ctx.processor.tokenizer
    kept_f = (out_dir / ".distilled.jsonl.tmp").open("w")
    dropped_f = (out_dir / ".distill_dropped.jsonl.tmp").open("w")
    with kept_f, dropped_f:
        for chunk_pos in batches(list(range(n)), batch_size):
            live = [k for k in chunk_pos if not (policy == "drop" and failed_parts[k])]
            samples = {k: dataset[indices[k]] for k in chunk_pos}
            texts = ctx.engine.generate(ctx.model, ctx.processor, [samples[k] for k in live], ctx.max_new_tokens,
                                        greedy=bool(dcfg.get("greedy", False)),
                                        sample_params=[params[k] for k in live]) if live else []  # fmt: skip
            generated = dict(zip(live, texts, strict=True))
            wrong = [k for k in live if not equivalent(extract_answer(generated[k]), samples[k].answer)]
            revised = plugins.reviser.revise([samples[k] for k in wrong], [generated[k] for k in wrong], ctx) \
                if wrong else []  # fmt: skip
            fixes = dict(zip(wrong, revised, strict=True))
            for k in chunk_pos:
                s = samples[k]
                rec: dict[str, Any] = {
                    "index": indices[k], "id": s.id,
                    "scores": {p: raw[p][k] for p in raw}, "failed": failed_parts[k],
                    "normalised": {g: round(groups[g][k], 6) for g in GROUPS}, "sampling": params[k],
                }  # fmt: skip
                if k not in generated:
                    rec.update(status="dropped", why="scorer failed", chain=None, generated=None)
                elif k not in fixes:
                    rec.update(status="kept", chain=chain_of(generated[k]), generated=generated[k])
                elif fixes[k]:
                    rec.update(status="revised", chain=fixes[k], generated=generated[k])
                else:
                    rec.update(status="dropped", why="wrong answer, not revised", chain=None, generated=generated[k])
                if rec["status"] == "kept" and not rec["chain"]:  # right answer but no closed thought
                    rec.update(status="dropped", why="no </think> chain")
                rec["completion_tokens"] = len(tok(rec["generated"] or "", add_special_tokens=False)["input_ids"])
                rec["chain_tokens"] = len(tok(rec["chain"] or "", add_special_tokens=False)["input_ids"])
                rec["meta"] = s.meta
                records.append(rec)
                row = _row(s, rec, out_dir)
                (kept_f if rec["status"] != "dropped" else dropped_f).write(json.dumps(row) + "\n")
    (out_dir / ".distilled.jsonl.tmp").replace(out_dir / "distilled.jsonl")
    (out_dir / ".distill_dropped.jsonl.tmp").replace(out_dir / "distill_dropped.jsonl")
    summary = _summary(records, failures)
    write_json_atomic(out_dir / "distill.json", summary)
    log.info("distill: %d samples: %d kept, %d revised, %d dropped", n, summary["kept"], summary["revised"],
             summary["dropped"])  # fmt: skip
    return DistillResult(records, summary)


def _row(sample: Any, rec: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """The sample in the documented JSONL schema; images without a source file are written as PNG."""
    images = image_refs(sample, out_dir)
    prov = {k: rec[k] for k in ("index", "scores", "failed", "normalised", "sampling", "status", "completion_tokens",
                                "chain_tokens")}  # fmt: skip
    if rec.get("why"):
        prov["why"] = rec["why"]
        prov["generated"] = rec["generated"]
    return {"id": sample.id, "images": images, "question": sample.question, "answer": sample.answer,
            "reasoning": rec["chain"], "meta": {**sample.meta, "distill": prov}}  # fmt: skip


def _summary(records: list[dict[str, Any]], failures: Counter[str]) -> dict[str, Any]:
    status = Counter(r["status"] for r in records)
    penalties = [r["sampling"].get("repetition_penalty") for r in records if "repetition_penalty" in r["sampling"]]
    by_task: dict[str, dict[str, Any]] = {}
    for task in sorted({str(r["meta"].get("task")) for r in records if r["meta"].get("task")}):
        mine = [r for r in records if r["meta"].get("task") == task]
        pens = [r["sampling"].get("repetition_penalty", 1.0) for r in mine]
        by_task[task] = {"n": len(mine), "mean_penalty": round(mean(pens), 4),
                         "completion_tokens": _length_stats([r["completion_tokens"] for r in mine if r["generated"]]),
                         "kept_or_revised": sum(r["status"] != "dropped" for r in mine)}  # fmt: skip
    return {
        "samples": len(records), "kept": status["kept"], "revised": status["revised"], "dropped": status["dropped"],
        "scorer_failures": dict(failures),
        "repetition_penalty": {"min": min(penalties), "mean": round(mean(penalties), 4), "max": max(penalties)}
        if penalties else None,
        "completion_tokens": _length_stats([r["completion_tokens"] for r in records if r["generated"]]),
        "by_task": by_task,
    }  # fmt: skip


class Distill:
    """``stage=distill`` (runs once, outside Lightning): see the module docstring."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = dict(cfg)

    def run_stage(self, run_dir: Path) -> DistillResult | None:
        from r1v.data.build import build_datasets
        from r1v.model.load import inference_model
        from r1v.runtime.runs import already_finished

        if already_finished(run_dir, "distill.json", self.cfg.get("resume"), "a distilled data set"):
            return None
        dcfg = self.cfg["distill"]
        plugins = build_plugins(dcfg)  # judge endpoints are checked here, before the model is even built
        train, _ = build_datasets(self.cfg, get_registry())
        limit = dcfg.get("limit")
        indices = list(range(len(train) if limit is None else min(int(limit), len(train))))
        model, processor = inference_model(self.cfg)
        ctx = ScoreContext(model, processor, plugins.engine, int(dcfg["max_new_tokens"]), int(dcfg["batch_size"]))
        return distill(train, indices, ctx, plugins, dcfg, run_dir)

"""Run a model over benchmark items: R1V's prompts, n samples per question, rule-based scoring, pass@k,
per-category scores and response lengths; every completion to ``samples.jsonl``, the summary to
``summary.json`` (both written atomically), and a printed table."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import mean, median
from typing import Any

from r1v.core.interfaces import Sample
from r1v.evaluation.scoring import EvalItem, pass_at_k, prompt_text, score

log = logging.getLogger(__name__)


def with_media(sample: Sample, item: EvalItem, processor: Any) -> Sample:
    """The item's audio clips and video frames decoded into ``sample`` (frames per video: the processor's
    ``data.video.frames``); items without them pass through untouched. Already decoded media (an AudioClip, a
    list of frames: benchmarks generated in memory) are taken as they are."""
    if item.audios:
        from r1v.data.audio import decode

        sample.audios = [decode(p) if isinstance(p, str | Path) else p for p in item.audios]
        sample.audio_paths = [str(p) for p in item.audios if isinstance(p, str | Path)]
    if item.videos:
        from r1v.data.video import read_frames

        frames = processor.video.frames
        sample.videos = [read_frames(p, frames) if isinstance(p, str | Path) else list(p) for p in item.videos]
        sample.video_paths = [str(p) for p in item.videos if isinstance(p, str | Path)]
    return sample


def generate(engine: Any, model: Any, processor: Any, items: list[EvalItem], n_samples: int, max_new_tokens: int,
             greedy: bool, prompt: str = "auto") -> list[list[list[int]]]:  # fmt: skip
    """Completion token ids: ``[item][sample] -> ids``."""
    samples = [with_media(Sample(it.id, prompt_text(it, prompt), it.answer, list(it.images)), it, processor)
               for it in items for _ in range(n_samples)]  # fmt: skip
    ids = engine.generate_ids(model, processor, samples, max_new_tokens, greedy=greedy)
    return [ids[i * n_samples : (i + 1) * n_samples] for i in range(len(items))]


def evaluate(model: Any, processor: Any, engine: Any, items: list[EvalItem], out_dir: Path, *, n_samples: int = 1,
             ks: Sequence[int] = (1,), max_new_tokens: int = 1024, batch_size: int = 8, greedy: bool = True,
             name: str = "benchmark", prompt: str = "auto", judge: Any = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate and write ``out_dir/samples.jsonl`` and ``out_dir/summary.json``; returns the summary."""
    for k in ks:
        pass_at_k(n_samples, 0, k)  # refuses k > n_samples before anything is generated
    out_dir.mkdir(parents=True, exist_ok=True)
    eos = processor.tokenizer.eos_token_id
    per_item: list[dict[str, Any]] = []
    tmp = out_dir / ".samples.jsonl.tmp"
    with tmp.open("w") as f:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            rows_of = generate(engine, model, processor, batch, n_samples, max_new_tokens, greedy, prompt)
            for item, rows in zip(batch, rows_of, strict=True):
                completions = []
                for ids in rows:
                    text = processor.decode_completion(ids)
                    ok, found = score(item, text)
                    rec = {"text": text, "extracted": found, "correct": ok, "tokens": len(ids),
                           "clipped": not ids or ids[-1] != eos}  # fmt: skip
                    if judge is not None:  # the judge's verdict counts; the rule's stays on record
                        rec["rule_correct"], rec["correct"] = ok, judge(item, text, ok)
                    completions.append(rec)
                rec = {"id": item.id, "category": item.category, "kind": item.kind, "question": item.question,
                       "choices": item.choices, "answer": item.answer, "completions": completions}  # fmt: skip
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                per_item.append(rec)
            log.info("eval %s: %d/%d questions", name, min(start + batch_size, len(items)), len(items))
    tmp.replace(out_dir / "samples.jsonl")
    summary = summarise(per_item, n_samples, ks, name)
    tmp = out_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out_dir / "summary.json")
    return summary


def summarise(per_item: list[dict[str, Any]], n_samples: int, ks: Sequence[int], name: str) -> dict[str, Any]:
    """pass@1 (mean over the n samples), pass@k, per category, lengths, no-answer and clipped shares."""

    def scores(recs: list[dict[str, Any]]) -> dict[str, float]:
        out = {}
        for k in ks:
            vals = [pass_at_k(n_samples, sum(c["correct"] for c in r["completions"]), k) for r in recs]
            out[f"pass@{k}"] = round(100 * mean(vals), 2) if vals else 0.0
        return out

    comps = [c for r in per_item for c in r["completions"]]
    lengths = [c["tokens"] for c in comps]
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in per_item:
        by_cat[r["category"]].append(r)
    return {
        "benchmark": name, "questions": len(per_item), "n_samples": n_samples, **scores(per_item),
        "categories": {c: {"questions": len(rs), **scores(rs)} for c, rs in sorted(by_cat.items())},
        "length": {"mean": round(mean(lengths), 1), "median": median(lengths), "max": max(lengths)} if lengths else {},
        "no_answer_share": round(sum(c["extracted"] is None for c in comps) / max(len(comps), 1), 4),
        "clipped_share": round(sum(c["clipped"] for c in comps) / max(len(comps), 1), 4),
    }  # fmt: skip


def table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: overall then per category."""
    keys = [k for k in summary if k.startswith("pass@")]
    lines = [
        f"| {summary['benchmark']} | questions | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
        "| **all** | " + f"{summary['questions']} | " + " | ".join(f"{summary[k]:.1f}" for k in keys) + " |",
    ]
    for cat, s in summary["categories"].items():
        lines.append(f"| {cat} | {s['questions']} | " + " | ".join(f"{s[k]:.1f}" for k in keys) + " |")
    length = summary.get("length") or {}
    lines.append(f"\nresponse tokens: mean {length.get('mean')}, median {length.get('median')}, max "
                 f"{length.get('max')}; no answer {100 * summary['no_answer_share']:.1f}%, clipped "
                 f"{100 * summary['clipped_share']:.1f}%")  # fmt: skip
    return "\n".join(lines)

"""Benchmarks R1V reports, read from local copies in their publishers' layouts (no downloads), and the
bundled synthetic set. Each factory takes ``path`` (a file or the dataset folder) and ``limit`` and
returns a list of :class:`r1v.evaluation.scoring.EvalItem`.

Expected layouts (Hugging Face dataset repos as cloned, or the single file):

- ``mmmu``: MMMU/MMMU — ``<Subject>/validation-*.parquet`` (columns id, question, options, answer,
  question_type, image_1 … image_7); ``<image k>`` tags become the images in order of mention.
- ``mathvista``: AI4Math/MathVista — ``data/testmini-*.parquet`` (pid, question, choices, answer,
  question_type, decoded_image or image; metadata.category).
- ``math500``: HuggingFaceH4/MATH-500 — ``test.jsonl`` (problem, answer, subject).
- ``aime2024``: HuggingFaceH4/aime_2024 — ``data/train-*.parquet`` or a JSONL (problem, answer).
- ``gpqa_diamond``: Idavidrein/gpqa — ``gpqa_diamond.csv`` (Question, Correct Answer, Incorrect Answer 1-3,
  High-level domain); options shuffled per question with a fixed seed.
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path
from typing import Any

from r1v import hookimpl
from r1v.core.interfaces import IMAGE_PLACEHOLDER
from r1v.evaluation.readers import BenchmarkError, find_files, load_image, read_rows
from r1v.evaluation.scoring import LETTERS, EvalItem

_IMAGE_TAG = re.compile(r"<image (\d+)>")


def _need(path: str | None, what: str, layout: str) -> str:
    if not path:
        raise BenchmarkError(f"benchmark '{what}': set path=<local copy> (expected {layout}; nothing is downloaded)")
    return path


def _limit(items: list[EvalItem], limit: int | None) -> list[EvalItem]:
    return items if limit is None else items[: int(limit)]


def synthetic(n: int = 128, split: str = "val", seed: int = 0, limit: int | None = None) -> list[EvalItem]:
    """The bundled synthetic scenes (counting, colours, positions, addition): open questions, by task."""
    from r1v.data.synthetic import generate

    out = []
    for i in range(n if limit is None else min(n, int(limit))):
        s = generate(i, split, seed)[0]
        out.append(
            EvalItem(
                s.id, s.question, s.answer, "open", images=s.images, category=s.meta["task"], meta={"prompt": "plain"}
            )
        )  # the tiny models were trained without R1V's instruction
    return out


def synthetic_omni(n: int = 200, split: str = "val", seed: int = 0, limit: int | None = None,
                   tasks: list[str] | None = None) -> list[EvalItem]:  # fmt: skip
    """The bundled omni tasks (clips and frames in memory): by task — beeps, higher (audio), moves (video),
    beeps_vs_shapes (image + audio)."""
    from r1v.data.synthetic_omni import TASKS, generate

    out = []
    for i in range(n if limit is None else min(n, int(limit))):
        s = generate(i, split, seed, tasks=tuple(tasks or TASKS))
        out.append(EvalItem(s.id, s.question, s.answer, "open", images=s.images, category=s.meta["task"],
                            meta={"prompt": "plain", "kind": s.meta["kind"]}, audios=list(s.audios),
                            videos=list(s.videos)))  # fmt: skip
    return out


def synthetic_hard(n: int = 1000, split: str = "test", seed: int = 0, limit: int | None = None) -> list[EvalItem]:
    """``data=synthetic_hard``'s held-out questions (relations, counts with arithmetic; never a training scene and
    question): open questions, by task. The default 1,000 keep one standard error ≤ 1.6 points at 50%."""
    from r1v.data.synthetic_hard import TASKS, SyntheticHard

    ds = SyntheticHard(n if limit is None else min(n, int(limit)), split, seed, tasks=TASKS)
    return [EvalItem(s.id, s.question, s.answer, "open", images=s.images, category=s.meta["task"],
                     meta={"prompt": "plain"}) for s in (ds[i] for i in range(len(ds)))]  # fmt: skip


MMMU_LAYOUT = "MMMU/MMMU as cloned: <Subject>/validation-*.parquet"


def mmmu(path: str | None = None, split: str = "validation", limit: int | None = None) -> list[EvalItem]:
    """MMMU (val): multiple-choice and open questions with up to 7 images, by subject."""
    root = Path(_need(path, "mmmu", MMMU_LAYOUT))
    items = []
    for file in find_files(root, [f"*/{split}-*.parquet", f"{split}-*.parquet", "*.parquet"], "mmmu", MMMU_LAYOUT):
        for row in read_rows(file, "mmmu", ("id", "question", "options", "answer", "question_type")):
            where = f"{file} row {row['id']}"
            options = ast.literal_eval(row["options"]) if isinstance(row["options"], str) else list(row["options"])
            text = row["question"] + "".join(f"\n{o}" for o in options)  # tags may sit in options too
            order = [int(k) for k in _IMAGE_TAG.findall(text)]
            images = []
            for k in dict.fromkeys(order):  # each image once, in order of first mention
                if f"image_{k}" not in row:
                    raise BenchmarkError(f"benchmark 'mmmu': {where} mentions <image {k}> but {file} has no "
                                         f"column image_{k}")  # fmt: skip
                images.append(load_image(row[f"image_{k}"], file.parent, "mmmu", where))
            seen: set[str] = set()

            def tag(m: re.Match[str], seen: set[str] = seen) -> str:  # first mention → <image>, later: a reference
                if m.group(0) in seen:
                    return f"(image {m.group(1)})"
                seen.add(m.group(0))
                return IMAGE_PLACEHOLDER

            question = _IMAGE_TAG.sub(tag, row["question"])
            choices = [_IMAGE_TAG.sub(tag, o) for o in options]
            subject = "_".join(str(row["id"]).split("_")[1:-1]) or "all"  # validation_Art_Theory_12 → Art_Theory
            mc = row["question_type"] == "multiple-choice" and bool(choices)
            items.append(EvalItem(str(row["id"]), question, str(row["answer"]).strip(), "mc" if mc else "open",
                                  choices if mc else [], images, subject,
                                  {"subfield": row.get("subfield")}))  # fmt: skip
    return _limit(items, limit)


MATHVISTA_LAYOUT = "AI4Math/MathVista as cloned: data/testmini-*.parquet (+ images/ when not embedded)"


def mathvista(path: str | None = None, split: str = "testmini", limit: int | None = None) -> list[EvalItem]:
    """MathVista (testmini): multiple choice and free-form answers on one image, by task."""
    root = Path(_need(path, "mathvista", MATHVISTA_LAYOUT))
    items = []
    for file in find_files(root, [f"data/{split}-*.parquet", f"{split}-*.parquet", "*.parquet", "*.jsonl"],
                           "mathvista", MATHVISTA_LAYOUT):  # fmt: skip
        base = file.parent.parent if file.parent.name == "data" else file.parent
        for row in read_rows(file, "mathvista", ("pid", "question", "answer", "question_type")):
            where = f"{file} row {row['pid']}"
            image = load_image(row.get("decoded_image") or row.get("image"), base, "mathvista", where)
            choices = [str(c) for c in (row.get("choices") or [])]
            meta = row.get("metadata") or {}
            category = str(meta.get("task") or meta.get("category") or "all")
            question = f"{IMAGE_PLACEHOLDER}\n{row['question']}"
            if row["question_type"] == "multi_choice" and choices:
                if str(row["answer"]) not in choices:
                    raise BenchmarkError(f"benchmark 'mathvista': {where} has answer {row['answer']!r}, which is "
                                         "none of its choices")  # fmt: skip
                letter = LETTERS[choices.index(str(row["answer"]))]
                items.append(EvalItem(str(row["pid"]), question, letter, "mc", choices, [image], category))
            else:
                unit = f" (unit: {row['unit']})" if row.get("unit") else ""
                items.append(EvalItem(str(row["pid"]), question + unit, str(row["answer"]), "open", [], [image],
                                      category))  # fmt: skip
    return _limit(items, limit)


MATH500_LAYOUT = "HuggingFaceH4/MATH-500 as cloned: test.jsonl"


def math500(path: str | None = None, limit: int | None = None) -> list[EvalItem]:
    """MATH-500: open maths answers (LaTeX), by subject."""
    root = Path(_need(path, "math500", MATH500_LAYOUT))
    (file,) = find_files(root, ["test.jsonl", "*.jsonl", "*.parquet"], "math500", MATH500_LAYOUT)[:1]
    rows = read_rows(file, "math500", ("problem", "answer"))
    return _limit([EvalItem(str(r.get("unique_id") or f"math500-{i}"), r["problem"], str(r["answer"]), "open",
                            category=str(r.get("subject") or "all")) for i, r in enumerate(rows)], limit)  # fmt: skip


AIME_LAYOUT = "HuggingFaceH4/aime_2024 as cloned: data/train-*.parquet, or a JSONL with problem and answer"


def aime2024(path: str | None = None, limit: int | None = None) -> list[EvalItem]:
    """AIME 2024: 30 integer-answer problems."""
    root = Path(_need(path, "aime2024", AIME_LAYOUT))
    items = []
    for file in find_files(root, ["data/*.parquet", "*.parquet", "*.jsonl"], "aime2024", AIME_LAYOUT):
        for i, r in enumerate(read_rows(file, "aime2024", ("problem", "answer"))):
            items.append(EvalItem(str(r.get("id") or f"aime2024-{i}"), r["problem"], str(r["answer"]), "open",
                                  category="aime2024"))  # fmt: skip
    return _limit(items, limit)


GPQA_LAYOUT = "Idavidrein/gpqa as cloned: gpqa_diamond.csv"
GPQA_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def gpqa_diamond(path: str | None = None, seed: int = 0, limit: int | None = None) -> list[EvalItem]:
    """GPQA-Diamond: 198 four-option questions; the options are shuffled per question with ``seed``."""
    root = Path(_need(path, "gpqa_diamond", GPQA_LAYOUT))
    (file,) = find_files(root, ["gpqa_diamond.csv", "*.csv"], "gpqa_diamond", GPQA_LAYOUT)[:1]
    items = []
    for i, r in enumerate(read_rows(file, "gpqa_diamond", GPQA_COLUMNS)):
        rid = str(r.get("Record ID") or f"gpqa-{i}")
        options = [r[c].strip() for c in GPQA_COLUMNS[1:]]
        order = list(range(4))
        random.Random(f"{seed}/{rid}").shuffle(order)
        choices = [options[j] for j in order]
        items.append(EvalItem(rid, r["Question"].strip(), LETTERS[order.index(0)], "mc", choices,
                              category=str(r.get("High-level domain") or "all")))  # fmt: skip
    return _limit(items, limit)


def jsonl(path: str | None = None, limit: int | None = None) -> list[EvalItem]:
    """A JSONL file in the training schema (question, answer, images, audios, videos); asked as written."""
    from r1v.evaluation.local import jsonl_items

    return _limit(jsonl_items(_need(path, "jsonl", "a .jsonl file in the training data schema")), limit)


@hookimpl
def register_benchmarks(register: Any) -> None:
    register("synthetic", synthetic, "bundled synthetic scenes (no files needed)")
    register("synthetic_omni", synthetic_omni, "bundled omni tasks: audio, video and image + audio (no files needed)")
    register("synthetic_hard", synthetic_hard, "data=synthetic_hard's held-out questions (no files needed)")
    register("mmmu", mmmu, "MMMU val, from a local MMMU/MMMU copy")
    register("mathvista", mathvista, "MathVista testmini, from a local AI4Math/MathVista copy")
    register("math500", math500, "MATH-500, from a local HuggingFaceH4/MATH-500 copy")
    register("aime2024", aime2024, "AIME 2024, from a local HuggingFaceH4/aime_2024 copy")
    register("gpqa_diamond", gpqa_diamond, "GPQA-Diamond, from a local Idavidrein/gpqa copy")
    register("jsonl", jsonl, "a JSONL file in the training schema (images, audios, videos)")

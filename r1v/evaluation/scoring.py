"""Benchmark items, R1V's unified prompts, answer extraction for multiple-choice and open questions, and
pass@k.

Extraction, in order: the last ``\\boxed{}`` after ``</think>``, else the last "Answer:" line (both via
:func:`r1v.evaluation.answers.extract_answer`). For multiple choice the extracted text is then read as an option
letter ("B", "(B)", "B.", "B) 42", "option B") or, failing that, matched against the option texts
(quoted, with or without its letter). Equivalence for open answers is math-verify's behind
:func:`r1v.evaluation.answers.equivalent`.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from typing import Any

from r1v.evaluation.answers import equivalent, extract_answer, normalize

MC_PROMPT = ("Answer the multiple choice preceding question. The last line of your response should follow this "
             "format: 'Answer: \\boxed{$LETTER}' (without quotes) where LETTER is one of the options. Think step by "
             "step before answering.")  # fmt: skip
OPEN_PROMPT = ("Answer the preceding question. The last line of your response should follow this format: "
               "'Answer: \\boxed{$FINAL_ANSWER}' (without quotes) where FINAL_ANSWER is your conclusion based on "
               "the reasoning provided. Think step by step before answering.")  # fmt: skip
LETTERS = string.ascii_uppercase
_LETTER = re.compile(r"^(?:option|choice|answer)?\s*[\(\[]?([A-Z])[\)\]]?(?:[.:)\s]|$)", re.IGNORECASE)


@dataclass
class EvalItem:
    """One benchmark question. ``kind`` is ``mc`` (``answer`` is the correct letter, ``choices`` the option
    texts in letter order) or ``open`` (``answer`` is the reference answer). ``question`` holds one
    ``<image>`` per entry of ``images``, in order."""

    id: str
    question: str
    answer: str
    kind: str = "open"
    choices: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)  # PIL images
    category: str = "all"
    meta: dict[str, Any] = field(default_factory=dict)
    # audio and video files (paths), one <audio>/<video> each; or decoded: AudioClips, lists of PIL frames
    audios: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)


PROMPT_STYLES = ("auto", "r1v", "plain")


def prompt_text(item: EvalItem, style: str = "auto") -> str:
    """The question as asked: the options as "A. …" lines for multiple choice, then (style ``r1v``) R1V's
    unified instruction of its kind. ``plain`` leaves the instruction out (the synthetic set: the tiny
    models never saw it); ``auto`` is the item's own preference (``meta["prompt"]``), else ``r1v``."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style '{style}' is not allowed (use {', '.join(PROMPT_STYLES)})")
    if style == "auto":
        style = item.meta.get("prompt", "r1v")
    text = item.question
    if item.kind == "mc":
        text += "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
    if style == "plain":
        return text
    return f"{text}\n{MC_PROMPT if item.kind == 'mc' else OPEN_PROMPT}"


def extract_choice(completion: str, choices: list[str]) -> str | None:
    """The option letter a completion answers with, or None."""
    found = extract_answer(completion)
    if found is None:
        return None
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", found).strip().strip("$").strip()
    m = _LETTER.match(text)
    if m and m.group(1).upper() in LETTERS[: len(choices)]:
        letter = m.group(1).upper()
        rest = text[m.end() :].strip()
        # "B" alone, "B. 42" — but not a word that merely starts with a letter ("Blue", "A cat")
        if not rest or text[len(m.group(0).rstrip()) - 1] in ".:)]" or text.lstrip("([").startswith(letter + ")"):
            return letter
    said = normalize(text.strip("'\""))
    for i, choice in enumerate(choices):  # the option text itself, quoted or not
        if said == normalize(choice) or (len(said) > 1 and equivalent(said, choice)):
            return LETTERS[i]
    return None


def score(item: EvalItem, completion: str) -> tuple[bool, str | None]:
    """(correct, what was extracted) for one completion."""
    if item.kind == "mc":
        letter = extract_choice(completion, item.choices)
        return letter == item.answer, letter
    found = extract_answer(completion)
    return equivalent(found, item.answer), found


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 − C(n−c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per question, got {n} (raise n_samples)")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)

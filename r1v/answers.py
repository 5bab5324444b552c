"""Answer extraction and a light equivalence check shared by rewards and evaluation.

Issue #5 replaces ``equivalent`` with math-verify for symbolic answers; the extraction rules (last
``\\boxed{}``, then an "Answer:" line) are R1V's.
"""

from __future__ import annotations

import re

_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:：]\s*(.+)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion: after ``</think>`` when present."""
    tail = completion.rsplit("</think>", 1)[-1]
    boxed = last_boxed(tail)
    if boxed is not None:
        return boxed
    lines = [m.group(1).strip() for m in _ANSWER_LINE.finditer(tail)]
    return lines[-1].rstrip(".") if lines else None


def normalize(ans: str) -> str:
    return re.sub(r"\s+", " ", ans.strip().strip(".").strip("$").lower())


def equivalent(predicted: str | None, truth: str) -> bool:
    if predicted is None:
        return False
    a, b = normalize(predicted), normalize(truth)
    if a == b:
        return True
    try:
        return abs(float(a) - float(b)) < 1e-9
    except ValueError:
        return False

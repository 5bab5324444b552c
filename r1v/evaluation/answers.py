"""Answer extraction and equivalence, shared by rewards, error sets, distillation and evaluation.

Extraction follows R1V: the last ``\\boxed{}`` after ``</think>``, else the last "Answer:" line.
Equivalence is math-verify's (symbolic: ``\\frac12`` = ``0.5``, ``x=3`` = ``3``, ``1,000`` = ``1000``,
units dropped) behind two guards that string comparison handles better: normalised equality first
(cheap, and the common case), and plain words ("red", option letters) never go to the symbolic
parser, which would read ``red`` as the product ``r·e·d`` and call it equal to ``der``.
"""

from __future__ import annotations

import functools
import logging
import re
import threading

log = logging.getLogger(__name__)
_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:：]\s*(.+)", re.IGNORECASE)
_WORDS = re.compile(r"^\(?[a-z][a-z\s\-']*\)?$")  # words or an option letter, no digits or LaTeX
_MATH_TIMEOUT_S = 5


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


def chain_of(completion: str) -> str | None:
    """The ``<think>`` chain of a completion (text before ``</think>``), or None if the thought never closed."""
    if "</think>" not in completion:
        return None
    chain = completion.split("</think>", 1)[0].strip()
    return chain or None


def normalize(ans: str) -> str:
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", ans)  # \text{red} -> red
    return re.sub(r"\s+", " ", text.strip().strip(".").strip("$").strip().lower())


def equivalent(predicted: str | None, truth: str) -> bool:
    """Whether a predicted final answer matches the ground truth (see the module docstring)."""
    if predicted is None:
        return False
    a, b = normalize(predicted), normalize(truth)
    if a == b or a.strip("()") == b.strip("()"):
        return True
    if _WORDS.match(a) or _WORDS.match(b):
        return False
    return _math_equal(a, b)


@functools.lru_cache(maxsize=65536)
def _math_equal(predicted: str, truth: str) -> bool:
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only the main thread may set (loader workers
    # and reward threads get no timeout; their callers bound the time).
    main = threading.current_thread() is threading.main_thread()
    timeout = _MATH_TIMEOUT_S if main else None
    try:
        gold = parse(f"${truth}$", parsing_timeout=timeout)
        pred = parse(f"${predicted}$", parsing_timeout=timeout)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout))
    except Exception as e:  # a parser failure is "not shown equal", never a crash
        log.debug("math-verify could not compare %r and %r: %s", predicted, truth, e)
        return False

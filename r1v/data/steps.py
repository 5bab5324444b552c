"""A reasoning chain's steps, as a process reward model reads them: one step per sentence of the chain.

The unit is the sentence because a generated chain carries no step markers: whatever wrote it (a data generator
that knows its steps, or a policy being scored), the same rule finds the same step ends. A sentence ends at a
``.``, ``?`` or ``!`` followed by white space or the end of the chain; the chain is the completion's text before
``</think>`` (all of it without one). A step's score is read at its end, the ``.`` token.
"""

from __future__ import annotations

import re

from r1v.core.interfaces import THINK_CLOSE

_END = re.compile(r"[.?!](?=\s|$)")


def chain_part(completion: str) -> str:
    """The reasoning chain of a completion: its text before ``</think>`` (the whole text without one)."""
    return completion.split(THINK_CLOSE, 1)[0]


def sentence_spans(chain: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the chain's sentences (``chain[start:end]`` ends in its ``.``; leading
    white space skipped); text after the last sentence end, if any, is not a step."""
    spans, start = [], 0
    for m in _END.finditer(chain):
        while start < m.start() and chain[start].isspace():
            start += 1
        spans.append((start, m.end()))
        start = m.end()
    return spans

"""A reasoning chain's steps, as a process reward model reads them.

A generated chain carries no step markers: whatever wrote it (a data generator that knows its steps, or a policy
being scored), the same rule must find the same step ends. Two units (``stage.head.step_unit``):

* ``sentence`` — a step ends at a ``.``, ``?`` or ``!`` followed by white space or the end of the chain;
* ``clause`` — also at a ``;`` so followed (the items of a scene description: "I see a red circle at top; …").

The chain is the completion's text before ``</think>`` (all of it without one). A step's score is read at its
end, the token holding that punctuation mark.
"""

from __future__ import annotations

import re

from r1v.core.interfaces import THINK_CLOSE

UNITS = ("sentence", "clause")
_END = {"sentence": re.compile(r"[.?!](?=\s|$)"), "clause": re.compile(r"[.?!;](?=\s|$)")}


def chain_part(completion: str) -> str:
    """The reasoning chain of a completion: its text before ``</think>`` (the whole text without one)."""
    return completion.split(THINK_CLOSE, 1)[0]


def step_spans(chain: str, unit: str = "sentence") -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the chain's steps (``chain[start:end]`` ends in its punctuation mark;
    leading white space skipped); text after the last step end, if any, is not a step."""
    spans, start = [], 0
    for m in _END[unit].finditer(chain):
        while start < m.start() and chain[start].isspace():
            start += 1
        spans.append((start, m.end()))
        start = m.end()
    return spans

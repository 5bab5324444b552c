"""Scorers importable by worker processes (the process-isolation tests of r1v.evaluation.sample_scores)."""

from __future__ import annotations

import os
import re


class StuckInC:
    """Catastrophic backtracking: the regular-expression engine runs in C and never checks for signals, so SIGALRM
    cannot interrupt it (about 2^40 steps)."""

    def score(self, samples, ctx):
        re.match(r"(a+)+$", "a" * 40 + "b")
        return [1.0 for _ in samples]


class Fine:
    def score(self, samples, ctx):
        return [float(len(s.question)) for s in samples]


class Crash:
    """Ends its worker process like a segfault or the OOM killer would, on a sample whose question is 'die'."""

    def score(self, samples, ctx):
        if any(s.question == "die" for s in samples):
            os._exit(3)
        return [1.0 for _ in samples]

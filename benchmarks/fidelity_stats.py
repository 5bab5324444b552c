"""The statistics of ``benchmarks/fidelity.py``, pure and stdlib-only: Student-t quantiles, mean ± 95% t-interval
across seeds, and the paired comparison that decides each of the fidelity questions (better / worse / not
distinguishable: the paired difference's interval excludes 0 above, below, or not at all).

The t distribution's CDF for an integer number of degrees of freedom has a closed form (Abramowitz & Stegun
26.7.3–4, a finite series in cos θ with θ = atan(t/√ν)); the quantile is found by bisection on it, so no scipy
is needed (the venv has none). For df 1–9 the 0.975 quantiles are the textbook 12.706, 4.303, 3.182, 2.776,
2.571, 2.447, 2.365, 2.306, 2.262.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

BETTER, WORSE, TIE = "better", "worse", "not distinguishable"


def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with ``df`` (a positive integer) degrees of freedom."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    df = int(df)
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: A = 2/π (θ + sinθ cosθ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + …, up to cos^(ν−3)))
        series, term = 0.0, 1.0
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c2 * (2 * k) / (2 * k + 1)
        a = 2 / math.pi * (theta + s * math.cos(theta) * series) if df > 1 else 2 * theta / math.pi
    else:  # even: A = sinθ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + …, up to cos^(ν−2))
        series, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            series += term
            term *= c2 * (2 * k - 1) / (2 * k)
        a = s * series
    a = min(max(a, 0.0), 1.0)  # A = P(|T| ≤ |t|)
    return 0.5 + a / 2 if t >= 0 else 0.5 - a / 2


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


@dataclass
class Interval:
    """Mean, sample standard deviation (n − 1), number of values and the two-sided t-interval around the mean
    (``low``/``high`` are None with fewer than two values)."""

    mean: float
    std: float
    n: int
    low: float | None
    high: float | None
    level: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        """The interval as a JSON-ready dict."""
        return asdict(self)


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean ± t(1 − (1 − level)/2, n − 1) · std/√n of ``values`` (std with n − 1)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("t_interval of no values")
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return Interval(mean, 0.0, n, None, None, level)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile(1 - (1 - level) / 2, n - 1) * std / math.sqrt(n)
    return Interval(mean, std, n, mean - half, mean + half, level)


@dataclass
class Comparison:
    """A paired comparison across seeds: ``arm`` against ``control`` on the seeds both have."""

    arm: str
    control: str
    seeds: list[int]
    difference: Interval  # of arm − control, per seed
    verdict: str  # better | worse | not distinguishable (also when fewer than two seeds)

    def as_dict(self) -> dict[str, Any]:
        """The comparison as a JSON-ready dict."""
        return {**asdict(self), "difference": self.difference.as_dict()}


def verdict(diff: Interval, higher_is_better: bool = True) -> str:
    """better when the difference's interval lies above 0 (below 0 when lower is better), worse when on the other
    side, else not distinguishable (an interval touching 0 included; fewer than two seeds have no interval)."""
    if diff.low is None or diff.high is None:
        return TIE
    if diff.low > 0:
        return BETTER if higher_is_better else WORSE
    if diff.high < 0:
        return WORSE if higher_is_better else BETTER
    return TIE


def paired(arm: str, control: str, arm_values: dict[int, float], control_values: dict[int, float],
           level: float = 0.95, higher_is_better: bool = True) -> Comparison:  # fmt: skip
    """Compare ``arm`` with ``control`` by the t-interval of their per-seed differences (seeds in both only)."""
    seeds = sorted(set(arm_values) & set(control_values))
    if not seeds:
        raise ValueError(f"{arm} vs {control}: no seed has both")
    diff = t_interval([arm_values[s] - control_values[s] for s in seeds], level)
    return Comparison(arm, control, seeds, diff, verdict(diff, higher_is_better))


def fmt_interval(iv: Interval, digits: int = 1) -> str:
    """``mean ± std [low, high]`` (no bracket with one value)."""
    text = f"{iv.mean:.{digits}f} ± {iv.std:.{digits}f}"
    if iv.low is not None and iv.high is not None:
        text += f" [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"
    return text

"""benchmarks/fidelity_stats.py (issue 27's fidelity benchmark): Student-t quantiles and CDF against textbook
values (and scipy where installed), the t-interval, the paired verdicts, and fidelity.py's statistics and table
on made-up per-seed results."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def fs(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the benchmarks import each other by bare name
    import fidelity_stats

    return fidelity_stats


# two-sided 95% (the 0.975 quantile) for df 1–9, as in every t table
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def test_t_quantiles_match_the_table(fs):
    for df, q in T975.items():
        assert fs.t_quantile(0.975, df) == pytest.approx(q, abs=5e-4)
        assert fs.t_quantile(0.025, df) == pytest.approx(-q, abs=5e-4)
    assert fs.t_quantile(0.995, 4) == pytest.approx(4.604, abs=5e-4)  # 99%, df 4
    assert fs.t_quantile(0.975, 1000) == pytest.approx(1.9623, abs=5e-4)  # → the normal's 1.96
    assert fs.t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-9)


def test_t_cdf_closed_forms(fs):
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert fs.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi)  # Cauchy
        assert fs.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(t * t + 2)))
        assert fs.t_cdf(t, 7) + fs.t_cdf(-t, 7) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fs.t_cdf(1.0, 0)


def test_against_scipy_when_installed(fs):
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 9, 17, 60):
        assert fs.t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
        assert fs.t_cdf(1.3, df) == pytest.approx(stats.t.cdf(1.3, df), rel=1e-9)
    vals = [48.1, 51.3, 47.0, 52.2, 49.9]
    iv = fs.t_interval(vals)
    lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=iv.mean, scale=stats.sem(vals))
    assert (iv.low, iv.high) == (pytest.approx(lo), pytest.approx(hi))


def test_t_interval_by_hand(fs):
    iv = fs.t_interval([1, 2, 3, 4, 5])
    assert iv.mean == 3 and iv.n == 5 and iv.std == pytest.approx(math.sqrt(2.5))
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert (iv.low, iv.high) == (pytest.approx(3 - half, abs=1e-6), pytest.approx(3 + half, abs=1e-6))
    one = fs.t_interval([4.0])
    assert (one.mean, one.std, one.low, one.high) == (4.0, 0.0, None, None)
    with pytest.raises(ValueError):
        fs.t_interval([])


def test_paired_verdicts(fs):
    control = {0: 50.0, 1: 40.0, 2: 60.0}
    up = fs.paired("arm", "ctl", {0: 52.0, 1: 43.0, 2: 62.5}, control)  # +2, +3, +2.5: excludes 0
    assert up.verdict == fs.BETTER and up.seeds == [0, 1, 2] and up.difference.mean == pytest.approx(2.5)
    assert fs.paired("arm", "ctl", {0: 48.0, 1: 37.0, 2: 57.5}, control).verdict == fs.WORSE
    assert fs.paired("arm", "ctl", {0: 53.0, 1: 38.0, 2: 61.0}, control).verdict == fs.TIE  # +3, −2, +1
    # lower is better (tokens): a shorter arm is better
    assert fs.paired("arm", "ctl", {0: 48.0, 1: 37.0, 2: 57.5}, control, higher_is_better=False).verdict == fs.BETTER
    # only the seeds both have; one seed gives no interval
    single = fs.paired("arm", "ctl", {0: 90.0, 7: 1.0}, control)
    assert single.seeds == [0] and single.verdict == fs.TIE and single.difference.low is None
    with pytest.raises(ValueError):
        fs.paired("arm", "ctl", {5: 1.0}, control)
    assert fs.fmt_interval(up.difference).startswith("2.5 ± 0.5 [")


def _fake_results(seed: int) -> dict:
    base = 30.0 + seed
    evals = {s: {"pass@1": base + i * 5 + (seed % 2), "length_mean": 100.0 - i, "questions": 32}
             for i, s in enumerate(("align", "reassemble", "sft", "iterative_sft", "grpo"))}  # fmt: skip
    return {
        "recipe": {
            "evals": evals,
            "iterative_steps": 6,
            "grpo_steps": 2,
            "drlc_penalty_mean": 1.5,
            "drlc_chain_tokens": 80.0 + seed,
        },
        "sft_extra": {"eval": {"pass@1": base + 14.0, "length_mean": 90.0}},
        "sft_continued": {"eval": {"pass@1": base + 10.0, "length_mean": 90.0}},  # GRPO is base + 20
        "fixed_penalty": {
            "eval": {"pass@1": base + 10.0 + 3 * (seed - 1), "length_mean": 95.0},
            "chain_tokens": 90.0 + seed,
            "penalty": 1.5,
        },
    }


def test_fidelity_statistics_and_table(fs):
    import fidelity
    import fidelity_report

    results = {s: _fake_results(s) for s in (0, 1, 2)}
    stats = fidelity.statistics(results)
    assert stats["rows"]["grpo"]["per_seed"] == {0: 50.0, 1: 52.0, 2: 52.0}
    verdicts = {c["arm"]: c["verdict"] for c in stats["comparisons"]}
    assert verdicts["grpo"] == fs.BETTER  # +10 every seed
    assert verdicts["drlc_chain_tokens"] == "shorter"  # 10 tokens fewer every seed
    assert verdicts["sft"] == fs.TIE  # DRLC − fixed: +3, +1, −3 spans 0
    plan = {"recipe": "r1v", "data": "synthetic_hard", "quick": True, "benchmark": "synthetic_hard", "eval_limit": 32}
    md = fidelity_report.render({"plan": plan, "seeds": [0, 1, 2], **stats})
    assert "| GRPO |" in md and "69.0" in md and "**better**" in md and "not distinguishable" in md
    assert "6 plain SFT step(s)" in md and "fixed P = 1.5" in md


def test_synthetic_hard_benchmark(registry):
    items = registry.build("benchmark", "synthetic_hard", limit=4)
    assert len(items) == 4 and len({it.id for it in items}) == 4
    assert {it.category for it in items} <= {"relation_count", "more_plus", "rows_diff"}
    assert all(it.images and it.meta["prompt"] == "plain" and "test" in it.id for it in items)

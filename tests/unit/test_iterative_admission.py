"""Who enters iterative SFT's round: D_t = {RM ≥ τ} ∪ E_{t−1}, and the error set gated by stage.errors.min_score."""

from __future__ import annotations

import pytest

from r1v.stages.iterative import admission


@pytest.mark.parametrize(("score", "wrong", "reasons"), [
    (4.0, False, ["rm_score>=3"]),
    (3.0, False, ["rm_score>=3"]),           # τ is inclusive
    (2.0, False, []),
    (2.0, True, ["wrong_in_previous_round"]),  # R1V: every wrong answer enters, whatever its score
    (0.0, True, ["wrong_in_previous_round"]),
    (None, True, ["wrong_in_previous_round"]),  # the scorer failed: it can still enter as an error
    (5.0, True, ["rm_score>=3", "wrong_in_previous_round"]),
    (None, False, []),
])  # fmt: skip
def test_r1v_admits_every_wrong_answer(score, wrong, reasons):
    assert admission(score, 3.0, wrong) == reasons


@pytest.mark.parametrize(("score", "wrong", "reasons"), [
    (1.0, True, ["wrong_in_previous_round"]),  # at the minimum
    (0.0, True, []),                            # a wrong answer whose chain the RM rejects stays out
    (None, True, []),                           # no score, no proof the chain is sound
    (4.0, True, ["rm_score>=3", "wrong_in_previous_round"]),
    (3.0, False, ["rm_score>=3"]),              # right answers are untouched by the minimum
])  # fmt: skip
def test_min_score_gates_the_error_set_only(score, wrong, reasons):
    assert admission(score, 3.0, wrong, min_error_score=1.0) == reasons

"""The hybrid-pipeline parts: answer equivalence, DRLC and its per-sample repetition penalty in the ``hf``
rollout, score calibration and the scorer failure policy, and the built-in (heuristic and model) scorers."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import replace

import pytest
import torch
from PIL import ImageFilter

from r1v.core.interfaces import Sample, ScoreContext
from r1v.data.synthetic import generate
from r1v.evaluation.answers import equivalent, extract_answer
from r1v.evaluation.sample_scores import (
    ScoringError,
    calibrate,
    completion_nll,
    impute_mean,
    minmax,
    run_scorer,
    without_images,
)


def _val(i: int) -> Sample:
    return generate(i, "val")[0]


# -- answers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "truth"),
    [("\\frac{1}{2}", "0.5"), ("x=3", "3"), ("1,000", "1000"), ("2\\sqrt{2}", "\\sqrt{8}"), ("Red", "red"),
     ("(B)", "B"), ("\\text{red}", "red"), ("5.", "5")],
)  # fmt: skip
def test_equivalent_true(predicted, truth):
    assert equivalent(predicted, truth) is True


@pytest.mark.parametrize(
    ("predicted", "truth"), [("red", "der"), ("3", "4"), (None, "3"), ("(A)", "B"), ("\\frac{1}{3}", "0.5")]
)
def test_equivalent_false(predicted, truth):
    assert equivalent(predicted, truth) is False


def test_extract_answer_last_boxed_after_think():
    text = "<think>maybe \\boxed{1}</think> so \\boxed{2}, finally \\boxed{\\frac{3}{4}}."
    assert extract_answer(text) == "\\frac{3}{4}"
    # a box only inside the thought does not count; the "Answer:" line after it does
    assert extract_answer("<think>\\boxed{1}</think>\nAnswer: 7.") == "7"
    assert extract_answer("<think>\\boxed{1}</think> nothing") is None
    assert extract_answer("no think, \\boxed{a} then \\boxed{b}") == "b"


# -- per-sample repetition penalty and the hf rollout ----------------------------------------------------


def test_per_sample_repetition_penalty_matches_transformers_rowwise():
    from transformers import RepetitionPenaltyLogitsProcessor

    from r1v.generation.hf import PerSampleRepetitionPenalty

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 20, generator=g)
    input_ids = torch.randint(0, 20, (3, 5), generator=g)
    input_ids[1, 3] = input_ids[1, 0]  # a repeated token is penalised once, not twice
    penalties = [1.0, 1.5, 2.0]
    out = PerSampleRepetitionPenalty(torch.tensor(penalties))(input_ids, scores.clone())
    for b, p in enumerate(penalties):
        ref = RepetitionPenaltyLogitsProcessor(penalty=p)(input_ids[b : b + 1], scores[b : b + 1].clone())
        assert torch.allclose(out[b : b + 1], ref), b
    assert torch.equal(out[0], scores[0])  # P = 1 leaves the row alone
    assert not torch.allclose(out[2], scores[2])
    # tokens never generated are untouched in every row
    for b in range(3):
        unseen = torch.ones(20, dtype=torch.bool)
        unseen[input_ids[b]] = False
        assert torch.equal(out[b, unseen], scores[b, unseen])


def test_per_sample_repetition_penalty_without_generated_tokens():
    from r1v.generation.hf import PerSampleRepetitionPenalty

    scores = torch.randn(3, 20, generator=torch.Generator().manual_seed(1))
    out = PerSampleRepetitionPenalty(torch.tensor([1.0, 1.5, 2.0]))(torch.zeros(3, 0, dtype=torch.long), scores)
    assert torch.equal(out, scores)


def test_hf_rollout_rejects_bad_sample_params(registry, tiny_vlm, one_thread):
    model, processor = tiny_vlm
    engine = registry.build("rollout", "hf")
    samples = [_val(i) for i in range(4)]
    with pytest.raises(ValueError, match="sample_params has 3 entries for 4 samples"):
        engine.generate(model, processor, samples, 8, greedy=True, sample_params=[{}] * 3)
    bad = [{"repetition_penalty": 1.2}] * 3 + [{"repetition_penalty": 1.2, "top_k": 5}]
    with pytest.raises(ValueError, match="cannot set 'top_k' per sample") as e:
        engine.generate(model, processor, samples, 8, greedy=True, sample_params=bad)
    assert "repetition_penalty" in str(e.value)


def test_hf_rollout_neutral_sample_params_match_plain_greedy(registry, tiny_vlm, one_thread):
    model, processor = tiny_vlm
    engine = registry.build("rollout", "hf")
    samples = [_val(i) for i in range(4)]
    plain = engine.generate(model, processor, samples, 24, greedy=True)
    neutral = engine.generate(model, processor, samples, 24, greedy=True,
                              sample_params=[{"repetition_penalty": 1.0}] * 4)  # fmt: skip
    assert len(plain) == 4 and all(isinstance(t, str) for t in plain)
    assert neutral == plain


def test_hf_rollout_mixed_penalties_match_uniform_runs(registry, tiny_vlm, one_thread):
    """Row i under sample_params P_i generates what a run with P_i for everyone generates for it."""
    model, processor = tiny_vlm
    samples = [_val(i) for i in range(4)]
    plain = registry.build("rollout", "hf").generate(model, processor, samples, 24, greedy=True)
    strong = registry.build("rollout", "hf", repetition_penalty=2.0).generate(model, processor, samples, 24,
                                                                              greedy=True)  # fmt: skip
    assert strong[1] != plain[1]  # the untrained tiny model repeats itself, so P = 2 must show
    mixed = registry.build("rollout", "hf").generate(
        model, processor, samples, 24, greedy=True,
        sample_params=[{"repetition_penalty": 1.0}, {"repetition_penalty": 2.0}, {}, {"repetition_penalty": 2.0}],
    )  # fmt: skip
    assert mixed == [plain[0], strong[1], plain[2], strong[3]]


def test_hf_rollout_sample_params_ignore_backbone_generation_config(registry, tiny_vlm, one_thread, monkeypatch):
    """A real backbone's generation_config may carry its own repetition penalty; the engine's knob overrides
    it without sample_params, so sample_params=[{P=1}]*B must generate the same texts."""
    model, processor = tiny_vlm
    monkeypatch.setattr(model.backbone.generation_config, "repetition_penalty", 1.5)
    engine = registry.build("rollout", "hf")
    samples = [_val(i) for i in range(4)]
    plain = engine.generate(model, processor, samples, 24, greedy=True)
    neutral = engine.generate(model, processor, samples, 24, greedy=True,
                              sample_params=[{"repetition_penalty": 1.0}] * 4)  # fmt: skip
    assert neutral == plain


# -- length controllers ----------------------------------------------------------------------------------


def test_drlc_penalty_range_and_formula(registry):
    d = registry.build("length", "drlc")
    assert d.penalty(1, 1, 1) == pytest.approx(1.0)
    assert d.penalty(0, 0, 0) == pytest.approx(2.0)
    blends = [i / 10 for i in range(11)]
    values = [d.penalty(x, x, x) for x in blends]
    assert all(a > b for a, b in itertools.pairwise(values))
    # one score moving up (the others fixed) also lowers the penalty
    assert d.penalty(0.2, 0.5, 0.9) > d.penalty(0.2, 0.6, 0.9) > d.penalty(0.2, 0.6, 1.0)
    assert d(10_000) == 0.0

    d2 = registry.build("length", "drlc", alpha=1.0, beta=2.0, gamma=0.5, max_penalty=2.0)
    expected = min(2.0, math.exp(1.0 * (1 - (0.2 + 2 * 0.5 + 0.5 * 0.9) / 3.5)))
    assert d2.penalty(0.2, 0.5, 0.9) == pytest.approx(expected)
    assert expected == pytest.approx(1.69648, abs=1e-4)
    assert d2.sampling_params({"vision": 0.2, "text": 0.5, "integration": 0.9}) == {
        "repetition_penalty": pytest.approx(expected)
    }
    # capped at max_penalty: alpha=1 would give e > 2 at blend 0
    assert d2.penalty(0, 0, 0) == 2.0


@pytest.mark.parametrize("knobs", [{"alpha": -1.0}, {"beta": -0.1}, {"gamma": -2.0}, {"max_penalty": 0.5}])
def test_drlc_rejects_invalid_knobs(registry, knobs):
    with pytest.raises(ValueError, match="length 'drlc': need alpha, beta, gamma ≥ 0"):
        registry.build("length", "drlc", **knobs)


def test_fixed_and_reward_only_controllers_sampling_params(registry):
    from r1v.core.interfaces import sampling_params

    fixed = registry.build("length", "fixed", repetition_penalty=1.3)
    for scores in ({"vision": 0.0, "text": 0.0, "integration": 0.0}, {"vision": 1.0, "text": 0.3, "integration": 1.0}):
        assert fixed.sampling_params(scores) == {"repetition_penalty": 1.3}
        assert sampling_params(fixed, scores) == {"repetition_penalty": 1.3}
    scores = {"vision": 0.0, "text": 0.0, "integration": 0.0}
    assert sampling_params(registry.build("length", "overlong", max_len=100, buffer=10), scores) == {}
    assert sampling_params(registry.build("length", "none"), scores) == {}
    assert sampling_params(registry.build("length", "drlc"), scores) == {"repetition_penalty": pytest.approx(2.0)}
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        registry.build("length", "fixed", repetition_penalty=0.0)


# -- calibration, normalisation, failure policy -----------------------------------------------------------


def test_calibrate_none_passes_0_to_5_through():
    values = [0.0, 2.5, None, 5.0]
    assert calibrate(values, "none", "judge", ["a", "b", "c", "d"]) == values


def test_calibrate_none_rejects_out_of_scale_value():
    with pytest.raises(ScoringError) as e:
        calibrate([1.0, 7.5], "none", "bt_rm", ["s-ok", "s-42"])
    msg = str(e.value)
    assert "'bt_rm'" in msg and "s-42" in msg and "7.5" in msg and "stage.rm.calibration=quantile" in msg
    assert "s-ok" not in msg and "\n" not in msg
    with pytest.raises(ScoringError, match=r"-0\.5"):
        calibrate([-0.5], "none", "x", ["a"])


def test_calibrate_quantile_equal_bins_and_monotone():
    values = [float(v) for v in range(1, 13)]
    ids = [f"s{i}" for i in range(12)]
    out = calibrate(values, "quantile", "nll", ids)
    assert out == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0]
    assert Counter(out) == {float(k): 2 for k in range(6)}
    # order does not matter and None stays None
    shuffled = [7.0, None, 1.0, 12.0, 3.0, 10.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0, 11.0]
    cal = calibrate(shuffled, "quantile", "nll", [f"t{i}" for i in range(13)])
    assert cal[1] is None
    pairs = sorted((v, c) for v, c in zip(shuffled, cal, strict=True) if v is not None)
    assert [c for _, c in pairs] == out
    assert all(c in {0.0, 1.0, 2.0, 3.0, 4.0, 5.0} for c in out)


def test_calibrate_quantile_constant_and_errors():
    assert calibrate([3.3] * 4, "quantile", "x", list("abcd")) == [5.0] * 4
    assert calibrate([None, None], "quantile", "x", ["a", "b"]) == [None, None]
    with pytest.raises(ScoringError, match="need 5 increasing values"):
        calibrate([1.0, 2.0], "quantile", "x", ["a", "b"], quantiles=[0.2, 0.4, 0.6, 0.8])
    with pytest.raises(ScoringError, match="need 5 increasing values"):
        calibrate([1.0, 2.0], "quantile", "x", ["a", "b"], quantiles=[0.1, 0.3, 0.2, 0.5, 0.9])
    with pytest.raises(ScoringError, match="need 5 increasing values"):
        calibrate([1.0, 2.0], "quantile", "x", ["a", "b"], quantiles=[0.0, 0.2, 0.4, 0.6, 0.8])
    with pytest.raises(ScoringError, match="'zscore' is not allowed"):
        calibrate([1.0], "zscore", "x", ["a"])


def test_minmax_and_impute_mean():
    assert minmax([2.0, 4.0, None, 6.0]) == [0.0, 0.5, None, 1.0]
    assert minmax([3.0, None, 3.0]) == [0.5, None, 0.5]
    assert minmax([None, None]) == [None, None]
    assert impute_mean([0.0, None, 1.0, 0.5]) == [0.0, 0.5, 1.0, 0.5]
    assert impute_mean([0.2, None]) == [0.2, 0.2]
    assert impute_mean([None]) == [0.5]


class _Flaky:
    """Fails any batch that holds sample 'bad'; gives NaN for sample 'nan'; else the id's length."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, samples, ctx):
        ids = [s.id for s in samples]
        self.calls.append(ids)
        if "bad" in ids:
            raise RuntimeError("boom on bad")
        return [math.nan if s.id == "nan" else float(len(s.id)) for s in samples]


def _named(*ids: str) -> list[Sample]:
    return [Sample(i, "q?", "a") for i in ids]


def test_run_scorer_keep_retries_per_sample_and_counts():
    scorer, failures = _Flaky(), Counter()
    out = run_scorer("flaky", scorer, _named("a", "bad", "ccc"), ScoreContext(), failures, policy="keep")
    assert out == [1.0, None, 3.0]
    assert failures == Counter({"flaky": 1})
    assert scorer.calls == [["a", "bad", "ccc"], ["a"], ["bad"], ["ccc"]]


def test_run_scorer_error_policy_names_sample():
    with pytest.raises(ScoringError) as e:
        run_scorer("flaky", _Flaky(), _named("a", "bad"), ScoreContext(), Counter(), policy="error")
    msg = str(e.value)
    assert "'flaky'" in msg and "sample bad" in msg and "boom on bad" in msg


def test_run_scorer_nan_is_a_failure():
    failures: Counter[str] = Counter()
    out = run_scorer("flaky", _Flaky(), _named("a", "nan", "bb"), ScoreContext(), failures)
    assert out == [1.0, None, 2.0] and failures["flaky"] == 1
    out = run_scorer("flaky", _Flaky(), _named("nan", "bad", "bb"), ScoreContext(), failures, policy="drop")
    assert out == [None, None, 2.0] and failures["flaky"] == 3
    with pytest.raises(ScoringError, match=r"no score \(NaN\) for sample nan"):
        run_scorer("flaky", _Flaky(), _named("a", "nan"), ScoreContext(), Counter(), policy="error")


def test_run_scorer_wrong_length_is_not_retried():
    class Short:
        def score(self, samples, ctx):
            return [1.0]

    with pytest.raises(ScoringError, match="returned 1 scores for 2 samples"):
        run_scorer("short", Short(), _named("a", "b"), ScoreContext(), Counter())


# -- heuristic scorers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["question_difficulty", "reasoning_demand", "vtia"])
def test_text_scorers_rank_add_above_color_at(registry, name):
    samples = [_val(i) for i in range(20)]
    scorer = registry.build("scorer", name)
    values = scorer.score(samples, ScoreContext())
    assert len(values) == 20 and all(0.0 <= v <= 1.0 for v in values)
    by_task: dict[str, list[float]] = {}
    for s, v in zip(samples, values, strict=True):
        by_task.setdefault(s.meta["task"], []).append(v)
    assert "together" in samples[4].question and samples[3].question.startswith("<image>\nWhat colour")
    add, color_at = by_task["add"], by_task["color_at"]
    assert len(add) == len(color_at) == 4
    assert sum(add) / len(add) > sum(color_at) / len(color_at) + 0.1


def test_question_quality_garbled_vs_real(registry):
    q = registry.build("scorer", "question_quality")
    real = _val(0)
    garbled = replace(real, question="asdf")
    low, high = q.score([garbled, real], ScoreContext())
    assert high == pytest.approx(1.0)
    assert low == pytest.approx(0.3)  # −0.5 under 3 words, −0.2 no question word or mark
    assert low < high


def test_clarity_blur_and_resolution(registry):
    from r1v_plugins.scorers import laplacian_variance

    clarity = registry.build("scorer", "clarity")
    image = _val(0).images[0]
    blurred = image.filter(ImageFilter.GaussianBlur(3))
    assert clarity.one(image) > clarity.one(blurred) + 0.2
    assert laplacian_variance(image) > 10 * laplacian_variance(blurred)
    # resolution part alone: a huge blur reference makes sharpness ~0, so one() = res / 2
    res_only = registry.build("scorer", "clarity", blur_ref=1e12, ref_side=448)
    small = image.resize((32, 32))
    big = small.resize((256, 256))
    assert res_only.one(small) == pytest.approx(0.5 * 32 / 448, abs=1e-6)
    assert res_only.one(big) == pytest.approx(0.5 * 256 / 448, abs=1e-6)
    assert res_only.one(small) < res_only.one(big)
    # the full score is the mean of sharpness and resolution
    v = laplacian_variance(image)
    assert clarity.one(image) == pytest.approx(0.5 * (v / (v + 100.0) + 64 / 448))
    assert clarity.score([replace(_val(0), images=[])], ScoreContext()) == [0.0]


def test_chain_rules(registry):
    rules = registry.build("scorer", "chain_rules")
    s = _val(0)
    assert rules.one(s) == 5.0
    assert rules.one(replace(s, reasoning="")) == 0.0
    assert rules.one(replace(s, reasoning=None)) == 0.0
    first, rest = s.reasoning.split(". ", 1)
    repeated = f"{first}. {first}. {rest}"
    assert rules.one(replace(s, reasoning=repeated)) == 4.0
    # a chain that does not end on the answer loses its point too
    assert rules.one(replace(s, reasoning=f"{s.reasoning} Done.")) == 4.0
    assert rules.score([s, replace(s, reasoning="")], ScoreContext()) == [5.0, 0.0]


# -- model-based scorers ---------------------------------------------------------------------------------


def test_image_necessity_is_nll_difference(registry, tiny_vlm, one_thread):
    model, processor = tiny_vlm
    ctx = ScoreContext(model=model, processor=processor)
    samples = [_val(i) for i in range(4)]
    values = registry.build("scorer", "image_necessity").score(samples, ctx)
    assert len(values) == 4 and all(isinstance(v, float) and math.isfinite(v) for v in values)
    with_img = completion_nll(ctx, samples, "answer")
    without = completion_nll(ctx, samples, "answer", transform=without_images)
    assert values == pytest.approx([b - a for a, b in zip(with_img, without, strict=True)], abs=1e-6)
    assert all(math.isfinite(a) and a > 0 for a in with_img + without)
    # per-sample (batch of one) NLLs agree with the batched ones: right padding does not leak
    assert completion_nll(ctx, samples[1:2], "answer") == pytest.approx(with_img[1:2], rel=1e-4, abs=1e-4)
    assert without_images(samples[0]).images == [] and "<image>" not in without_images(samples[0]).question


def test_model_likelihood_is_minus_reasoning_nll(registry, tiny_vlm, one_thread):
    model, processor = tiny_vlm
    ctx = ScoreContext(model=model, processor=processor)
    samples = [_val(i) for i in range(4)]
    values = registry.build("scorer", "model_likelihood").score(samples, ctx)
    ref = completion_nll(ctx, samples, target="reasoning")
    assert values == pytest.approx([-v for v in ref], abs=1e-6)
    assert all(v < 0 for v in values)
    with pytest.raises(ScoringError, match="needs the model"):
        registry.build("scorer", "model_likelihood").score(samples, ScoreContext())
    # reduce=max: minus the NLL of each chain's most surprising token, computed by hand; never above the mean's
    worst = registry.build("scorer", "model_likelihood", reduce="max").score(samples, ctx)
    batch = processor.collate([processor.encode(s, "reasoning") for s in samples], padding_side="right")
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    for b, labels in enumerate(batch["labels"][:, 1:]):
        keep = labels != -100
        nll = -logp[b][keep].gather(1, labels[keep][:, None])[:, 0]
        assert worst[b] == pytest.approx(-float(nll.max()), abs=1e-5)
    assert all(w <= v + 1e-6 for w, v in zip(worst, values, strict=True))


@pytest.mark.parametrize(("reduce", "hint"), [("min", ""), ("Mean", " — did you mean 'mean'?"),
                                            ("maxx", " — did you mean 'max'?")])  # fmt: skip
def test_model_likelihood_reduce_not_allowed_is_one_line_naming_the_choices(registry, reduce, hint):
    """``reduce`` other than mean or max: built directly (the API), the scorer's own line; from a config, the
    validation's line (``stage.rm.scorer.reduce=...``, checked against the factory's Literal) before any run."""
    from r1v.core.errors import ConfigError
    from r1v.core.values import check_knob_values

    with pytest.raises(ConfigError) as e:
        registry.build("scorer", "model_likelihood", reduce=reduce)
    assert str(e.value) == f"scorer model_likelihood: reduce '{reduce}' is not one of mean, max"
    with pytest.raises(ConfigError) as e:
        check_knob_values(registry.get("scorer", "model_likelihood"), {"reduce": reduce}, "stage.rm.scorer")
    assert str(e.value) == (f"stage.rm.scorer.reduce='{reduce}': expected one of 'mean', 'max' "
                            f"(scorer 'model_likelihood'){hint}")  # fmt: skip


def test_a_scorer_stuck_in_c_code_is_killed_at_its_limit_in_a_worker_process():
    """SIGALRM only interrupts Python code; a scorer that does not need the model scores in a worker process
    (distill.scorer_isolation=process), which is killed at the time limit: the sample counts as failed, the
    pool is rebuilt for the next scorer, and a scorer that runs the model stays in the training process."""
    import time

    from r1v.evaluation.sample_scores import ScorerPool
    from tests.unit.scorer_fixtures import Fine, StuckInC

    samples = [generate(i, "train")[0] for i in range(2)]
    pool, failures = ScorerPool(workers=1), Counter()
    try:
        start = time.perf_counter()
        out = run_scorer("stuck", StuckInC(), samples, ScoreContext(), failures, "keep", 1.0, pool)
        assert out == [None, None] and failures["stuck"] == 2
        assert time.perf_counter() - start < 30  # the batch and each sample: killed at 2 s, 1 s, 1 s (+ start-ups)
        assert run_scorer("fine", Fine(), samples, ScoreContext(), failures, "keep", 30.0, pool) == [
            float(len(s.question)) for s in samples]  # fmt: skip
        model_scorer = Fine()
        model_scorer.needs_model = True
        assert not pool.isolates("m", model_scorer) and pool.isolates("f", Fine())
    finally:
        pool.close(kill=True)


def test_a_scorer_that_kills_its_worker_fails_its_samples_and_the_next_call_gets_fresh_workers():
    """A dead worker breaks a process pool for good; the pool is replaced, so only the crashing samples fail."""
    from r1v.evaluation.sample_scores import ScorerPool
    from tests.unit.scorer_fixtures import Crash, Fine

    samples = [replace(generate(0, "train")[0], question="die"), generate(1, "train")[0]]
    pool, failures = ScorerPool(workers=1), Counter()
    try:
        assert run_scorer("crash", Crash(), samples, ScoreContext(), failures, "keep", 30.0, pool) == [None, 1.0]
        assert failures == {"crash": 1}
        assert run_scorer("fine", Fine(), samples[1:], ScoreContext(), failures, "keep", 30.0, pool) == [
            float(len(samples[1].question))]  # fmt: skip
    finally:
        pool.close(kill=True)

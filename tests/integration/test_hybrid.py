"""Hybrid optimisation I on the tiny model: SFT gain, AL-CoTD distillation, iterative SFT rounds."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import held_out_accuracy, one_error_line, run_cli

pytestmark = pytest.mark.slow
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]
REASONER = ["model=tiny_reasoner"]


def accuracy_of(weights: Path, registry, compose, n: int = 96) -> float:
    from r1v.model.build import build
    from r1v.model.load import load_trainable

    model, processor = build(compose("model=tiny_reasoner")["model"], registry)
    load_trainable(model, str(weights))
    return held_out_accuracy(model.eval(), processor, registry, n)


def test_sft_on_reasoning_chains_raises_held_out_accuracy(reassembled_run, sft_run, registry, compose):
    """Stage 1 of hybrid optimisation (adapter only) beats the re-assembled start by a clear margin."""
    before = accuracy_of(reassembled_run, registry, compose)
    after = accuracy_of(sft_run, registry, compose)
    assert after >= before + 0.06, f"held-out accuracy: re-assembled {before:.3f}, after SFT {after:.3f}"
    trained = load_file(str(sft_run / "final" / "trainable.safetensors"))
    assert trained and all(k.startswith("adapter.") for k in trained)  # R1V's freeze policy: adapter only


# -- AL-CoTD ------------------------------------------------------------------------------------------------


def test_distill_writes_an_sft_dataset_with_provenance(sft_run, tmp_path):
    proc = run_cli(["stage=distill", *REASONER, f"checkpoint={sft_run}", "distill.limit=40", "run=d", *QUIET],
                   tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "runs" / "d"
    summary = json.loads((out / "distill.json").read_text())
    kept = [json.loads(x) for x in (out / "distilled.jsonl").read_text().splitlines()]
    dropped = [json.loads(x) for x in (out / "distill_dropped.jsonl").read_text().splitlines()]
    assert len(kept) + len(dropped) == 40 == summary["samples"]
    assert summary["kept"] + summary["revised"] == len(kept) > 0
    penalties = defaultdict(list)
    for row in kept + dropped:
        prov = row["meta"]["distill"]
        assert set(prov["scores"]) == {"clarity", "necessity", "quality", "difficulty", "reasoning_demand",
                                       "integration"}  # fmt: skip
        assert all(0.0 <= v <= 1.0 for v in prov["normalised"].values())
        assert 1.0 <= prov["sampling"]["repetition_penalty"] <= 2.0
        penalties[row["meta"]["task"]].append(prov["sampling"]["repetition_penalty"])
    for row in kept:
        assert row["meta"]["distill"]["status"] in ("kept", "revised") and row["reasoning"]
        assert (out / row["images"][0]).is_file()
    mean = {task: sum(v) / len(v) for task, v in penalties.items()}
    assert mean["color_at"] > mean["add"] + 0.3, mean  # identification is easy (P → 2); arithmetic is hard (P → 1)
    # The product is an SFT data set in the documented JSONL schema.
    proc = run_cli(["stage=sft", *REASONER, "data=jsonl", f"data.train={out / 'distilled.jsonl'}",
                    f"checkpoint={sft_run}", "stage.max_steps=3", "stage.val_every=3", "run=sft_on_d", *QUIET],
                   tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def _distill_in_process(compose, registry, tmp_path, sft_run, monkeypatch, **overrides):
    from r1v.core.interfaces import ScoreContext
    from r1v.data.datasets import SyntheticDataset
    from r1v.model.build import build
    from r1v.model.load import load_trainable
    from r1v.stages.distill import build_plugins, distill

    cfg = compose(*REASONER, "distill.reviser.name=drop", *[f"{k}={v}" for k, v in overrides.items()])
    model, processor = build(cfg["model"], registry)
    load_trainable(model, str(sft_run))
    plugins = build_plugins(cfg["distill"], registry)
    ctx = ScoreContext(model.eval(), processor, plugins.engine, 24, 4)
    dataset = SyntheticDataset(10, "train")
    return plugins, distill(dataset, list(range(10)), ctx, plugins, {**cfg["distill"], "batch_size": 4}, tmp_path)


@pytest.mark.parametrize("engine", ["static", "hf"])
def test_each_samples_drlc_penalty_reaches_the_sampler(compose, registry, tmp_path, sft_run, monkeypatch, engine):
    """The penalties the sampler applies, row by row, are the per-sample P of the provenance (both engines;
    that the static engine applies a row's P as transformers does: tests/unit/test_static_engine.py)."""
    from r1v.generation import StaticEngine
    from r1v.generation import hf as rollout

    seen: list[float] = []
    original = rollout.PerSampleRepetitionPenalty.__call__
    original_decode = StaticEngine.decode

    def spy(self, input_ids, scores):
        if input_ids.shape[1] == 1:  # first decode step of a generate() call: record its rows once
            seen.extend(self.penalties.tolist())
        return original(self, input_ids, scores)

    def spy_decode(self, lm, embeds, mask, max_new_tokens, greedy, knobs, eos, pad, **kwargs):
        seen.extend(knobs["repetition_penalty"])
        return original_decode(self, lm, embeds, mask, max_new_tokens, greedy, knobs, eos, pad, **kwargs)

    monkeypatch.setattr(rollout.PerSampleRepetitionPenalty, "__call__", spy)
    monkeypatch.setattr(StaticEngine, "decode", spy_decode)
    _, result = _distill_in_process(compose, registry, tmp_path, sft_run, monkeypatch,
                                    **{"distill.rollout.name": engine})  # fmt: skip
    expected = [r["sampling"]["repetition_penalty"] for r in result.records]
    assert len(set(expected)) > 3  # really per sample
    assert seen == pytest.approx(expected, abs=1e-6)


def test_a_failing_scorer_is_counted_and_the_run_goes_on(compose, registry, tmp_path, sft_run, monkeypatch):
    from r1v_plugins.scorers import QuestionText

    original = QuestionText.one

    def flaky(self, text):
        if "together" in text:  # the 'add' questions
            raise RuntimeError("judge timeout")
        return original(self, text)

    monkeypatch.setattr(QuestionText, "one", flaky)  # in this process only: the scorers score here (inline)
    inline = {"distill.scorer_isolation": "inline"}
    _, kept = _distill_in_process(compose, registry, tmp_path / "keep", sft_run, monkeypatch, **inline)
    adds = [r for r in kept.records if r["meta"]["task"] == "add"]
    assert adds and all(set(r["failed"]) == {"quality", "difficulty", "reasoning_demand"} for r in adds)
    assert all(r["status"] != "dropped" or r["why"] != "scorer failed" for r in kept.records)
    assert kept.summary["scorer_failures"] == {"quality": len(adds), "difficulty": len(adds),
                                               "reasoning_demand": len(adds)}  # fmt: skip
    _, dropped = _distill_in_process(compose, registry, tmp_path / "drop", sft_run, monkeypatch,
                                     **{"distill.on_scorer_error": "drop"}, **inline)  # fmt: skip
    assert {r["id"] for r in dropped.records if r.get("why") == "scorer failed"} == {r["id"] for r in adds}


def test_unreachable_judge_fails_before_generating(sft_run, tmp_path):
    proc = run_cli(["stage=distill", *REASONER, f"checkpoint={sft_run}", "distill.reviser.name=openai_judge",
                    "+distill.reviser.url=http://127.0.0.1:9/v1", "run=j", *QUIET], tmp_path, timeout=120)  # fmt: skip
    assert "http://127.0.0.1:9/v1 is unreachable" in one_error_line(proc)
    assert not (tmp_path / "runs" / "j" / "distilled.jsonl").exists()


# -- iterative SFT -----------------------------------------------------------------------------------------

ITER = ["stage=iterative_sft", *REASONER, "data.n_train=96", "stage.taus=[2,4]", "stage.lrs=[1e-3,2e-4]",
        "stage.val_generate=16", *QUIET]  # fmt: skip


def test_iterative_rounds_select_by_score_and_errors_and_resume(sft_run, tmp_path):
    args = [*ITER, f"checkpoint={sft_run}", "run=it"]
    proc = run_cli(args, tmp_path, env={"R1V_FAULT_INJECT": "between_rounds:1"})
    assert proc.returncode == 137  # killed right after round 1 was recorded
    run = tmp_path / "runs" / "it"
    state = json.loads((run / "iterative.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [1]
    round1 = load_file(str(run / "rounds" / "round1" / "final" / "trainable.safetensors"))

    again = run_cli(args, tmp_path)  # the same command without resume=auto refuses to overwrite
    assert again.returncode == 2 and "resume=auto" in again.stderr.splitlines()[-1]
    proc = run_cli([*args, "resume=auto"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((run / "iterative.json").read_text())
    assert [(r["round"], r["tau"], r["lr"]) for r in state["rounds"]] == [(1, 2.0, 1e-3), (2, 4.0, 2e-4)]
    kept1 = load_file(str(run / "rounds" / "round1" / "final" / "trainable.safetensors"))
    assert all(torch.equal(round1[k], kept1[k]) for k in round1)  # round 1 was not re-run

    scores = {r["index"]: r for r in map(json.loads, (run / "rm_scores.jsonl").read_text().splitlines())}
    assert len(scores) == 96 and {r["score"] for r in scores.values()} <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    for t, tau in ((1, 2.0), (2, 4.0)):
        rdir = run / "rounds" / f"round{t}"
        preds = {r["index"]: r for r in map(json.loads, (rdir / "predictions.jsonl").read_text().splitlines())}
        lineage = {r["index"]: r for r in map(json.loads, (rdir / "lineage.jsonl").read_text().splitlines())}
        expected = {i for i in scores if scores[i]["score"] >= tau} | {i for i, p in preds.items() if not p["correct"]}
        assert set(lineage) == expected  # D_t = {RM ≥ τ_t} ∪ E_{t−1}, exactly
        for i, row in lineage.items():
            assert (f"rm_score>={tau:g}" in row["reasons"]) == (scores[i]["score"] >= tau)
            assert ("wrong_in_previous_round" in row["reasons"]) == (not preds[i]["correct"])
        sel = json.loads((rdir / "selection.json").read_text())
        assert sel["n_used"] == len(lineage) and 0 < sel["n_wrong"] < 96
        assert (rdir / "metrics.csv").is_file()
    final = load_file(str(run / "final" / "trainable.safetensors"))
    round2 = load_file(str(run / "rounds" / "round2" / "final" / "trainable.safetensors"))
    assert all(torch.equal(final[k], round2[k]) for k in round2)
    # E_1 comes from the round-1 model, not the start: the two rounds' predictions differ somewhere.
    p1, p2 = ((run / "rounds" / f"round{t}" / "predictions.jsonl").read_text() for t in (1, 2))
    assert p1 != p2


def test_an_empty_round_stops_cleanly(sft_run, tmp_path):
    # chain_rules ≤ 4 for every sample (no chain has 1000 words) and no error set: nothing reaches τ=5.
    proc = run_cli([*ITER, f"checkpoint={sft_run}", "stage.taus=[5]", "stage.lrs=[1e-3]", "stage.rm.calibration=none",
                    "stage.rm.scorer.name=chain_rules", "+stage.rm.scorer.min_words=1000",
                    "stage.errors.enabled=false", "run=empty"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "iterative_sft: round 1 is empty: no sample scored ≥ τ=5 and the error set is off" in proc.stdout
    state = json.loads((tmp_path / "runs" / "empty" / "iterative.json").read_text())
    assert state["rounds"] == [] and "round 1 is empty" in state["stopped"]
    assert not (tmp_path / "runs" / "empty" / "final").exists()


def test_unbounded_scorer_needs_calibration(tmp_path):
    proc = run_cli([*ITER, "stage.rm.calibration=none", "run=cal"], tmp_path, timeout=120)
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("r1v: error:")]
    assert "stage.rm.scorer 'model_likelihood' gives unbounded scores; set stage.rm.calibration=quantile" in line


def test_reward_model_score_outside_0_5_is_one_line(sft_run, tmp_path, compose, monkeypatch):
    from omegaconf import OmegaConf
    from r1v_plugins.scorers import ChainRules

    from r1v.evaluation.sample_scores import ScoringError
    from r1v.train import run

    monkeypatch.setattr(ChainRules, "one", lambda self, s: 7.5)  # a 0–5 scorer that misbehaves
    cfg = compose(*[a for a in ITER if not a.startswith("trainer.")], f"checkpoint={sft_run}",
                  "stage.rm.scorer.name=chain_rules", "stage.rm.calibration=none", "run=oob")  # fmt: skip
    with pytest.raises(ScoringError, match=r"scored sample synthetic-train-0-0 7.5, outside R1V's 0–5 scale"):
        run(OmegaConf.create(cfg), tmp_path / "oob")


def test_lrs_must_match_rounds(tmp_path):
    proc = run_cli([*ITER, "stage.lrs=[1e-3]", "run=lr"], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "stage.lrs has 1 values for 2 rounds (stage.taus); give one learning rate per round" in proc.stderr


def test_redistill_before_each_round_trains_on_new_chains(sft_run, tmp_path):
    proc = run_cli([*ITER, f"checkpoint={sft_run}", "data.n_train=24", "stage.taus=[2]", "stage.lrs=[1e-3]",
                    "stage.redistill=true", "run=rd"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rdir = tmp_path / "runs" / "rd" / "rounds" / "round1"
    distilled = {r["meta"]["distill"]["index"]: r["reasoning"]
                 for r in map(json.loads, (rdir / "distill" / "distilled.jsonl").read_text().splitlines())}  # fmt: skip
    assert distilled and (rdir / "rm_scores.jsonl").is_file()  # scores of the re-distilled chains, this round's
    lineage = [json.loads(x) for x in (rdir / "lineage.jsonl").read_text().splitlines()]
    selection = json.loads((rdir / "selection.json").read_text())
    for row in lineage:  # a re-distilled sample trains on its new chain; the others keep the data set's
        assert row["chain"] == ("redistilled" if row["index"] in distilled else "original")
        if row["index"] in distilled:
            assert selection["chains"][str(row["index"])] == distilled[row["index"]]
    assert any(r["chain"] == "redistilled" for r in lineage)

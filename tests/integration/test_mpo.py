"""R1V2's preference stages on the tiny re-assembled model: MPO learns from pairs, make_pairs writes
pairs MPO can train on, a reward model learns to rank and scores GRPO rollouts; bad input gets one line."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.conftest import held_out_accuracy, run_cli

pytestmark = pytest.mark.slow
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]
TINY = ["model=tiny_reasoner", *QUIET]


def column(run, key: str) -> list[float]:
    return [float(r[key]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get(key)]


def accuracy_of(compose, registry, checkpoint) -> float:
    from r1v.model.load import inference_model

    model, processor = inference_model(compose("model=tiny_reasoner", f"checkpoint={checkpoint}"))
    return held_out_accuracy(model, processor, registry, n=64)


def test_mpo_raises_margin_and_held_out_accuracy(reassembled_run, tmp_path, compose, registry):
    """Same start (policy = reference: margin 0), 400 MPO steps on synthetic pairs: the held-out implicit-reward
    margin and pair ranking rise, and so does greedy accuracy (3-seed figures: benchmarks/preference.py)."""
    proc = run_cli(["stage=mpo", *TINY, f"checkpoint={reassembled_run}", "data=synthetic_pairs", "stage.lr=2e-3",
                    "stage.max_steps=400", "stage.val_every=400", "stage.val_generate=0", "stage.ckpt_every=200",
                    "run=m"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "m"
    margin, ranked = column(run, "val/margin")[-1], column(run, "val/pair_accuracy")[-1]
    assert margin > 0.1 and ranked > 0.55, (margin, ranked)  # seed 0: 0.35 / 0.67 (seeds 0-2: ≥ 0.15 / 0.58)
    for key in ("train/loss_dpo", "train/loss_bco", "train/loss_nll", "train/reward_chosen", "train/reward_rejected",
                "train/delta", "train/pair_accuracy"):  # fmt: skip
        assert column(run, key), key
    assert column(run, "train/delta")[-1] != 0.0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["r1v"]["mpo"]["delta"]["count"] > 0  # BCO's δ resumes with the run
    before, after = accuracy_of(compose, registry, reassembled_run), accuracy_of(compose, registry, run)
    assert after >= before + 0.08, (before, after)  # measured 0.23 -> 0.41


def test_make_pairs_then_mpo_and_no_pairs_stops_in_one_line(reassembled_run, tmp_path):
    proc = run_cli(["stage=make_pairs", *TINY, f"checkpoint={reassembled_run}", "stage.limit=24", "stage.k=6",
                    "run=p"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "p"
    summary = json.loads((run / "pairs.json").read_text())
    rows = [json.loads(x) for x in (run / "pairs.jsonl").read_text().splitlines()]
    dropped = [json.loads(x) for x in (run / "pairs_dropped.jsonl").read_text().splitlines()]
    assert summary["pairs"] == len(rows) > 0 and len(rows) + len(dropped) == 24
    for r in rows:  # chosen right, rejected wrong (threshold 1 on accuracy + 0.5·format)
        prov = r["meta"]["make_pairs"]
        assert prov["gap"] >= 1.0 and prov["chosen_parts"]["accuracy"] == 1.0
        assert prov["rejected_parts"]["accuracy"] == 0.0
        assert len(prov["candidates"]) == 6 and max(prov["candidates"]) == prov["chosen_score"]
        assert (run / r["images"][0]).is_file()
    proc = run_cli(["stage=mpo", *TINY, f"checkpoint={reassembled_run}", "data=pairs",
                    f"data.train={run / 'pairs.jsonl'}", "stage.max_steps=4", "stage.val_every=4", "run=mp"],
                   tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(["stage=make_pairs", *TINY, f"checkpoint={reassembled_run}", "stage.limit=4", "stage.k=2",
                    "stage.threshold=9", "run=none"], tmp_path)  # fmt: skip
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("r1v: error: stage.threshold=9.0: none of the 4 prompts") and "largest gap" in line
    assert json.loads((tmp_path / "runs" / "none" / "pairs.json").read_text())["pairs"] == 0  # summary still written


def test_reward_model_ranks_held_out_pairs_and_scores_grpo(reassembled_run, tmp_path):
    proc = run_cli(["stage=reward_model", *TINY, f"checkpoint={reassembled_run}", "data=synthetic_pairs",
                    "data.n_val=128", "stage.lr=1e-3", "stage.max_steps=300", "stage.val_every=300", "run=rm"],
                   tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rm = tmp_path / "runs" / "rm"
    ranked = column(rm, "val/pair_accuracy")[-1]
    assert ranked >= 0.58, ranked  # 128 held-out pairs, right vs wrong answer: chance is 0.5 (measured 0.65)
    from safetensors.torch import load_file

    saved = load_file(str(rm / "final" / "trainable.safetensors"))
    assert "reward_head.weight" in saved and any(k.startswith("backbone.") for k in saved)
    assert not any(k.startswith("vision.") for k in saved)  # the encoder stays frozen
    # a reward worker's first call loads the model: slow on a loaded machine, hence the time limit
    proc = run_cli(["stage=grpo", *TINY, f"checkpoint={reassembled_run}", "reward=[accuracy,format,reward_model]",
                    f"rewards.reward_model.path={rm}", "stage.max_new_tokens=48", "stage.max_steps=2",
                    "stage.val_every=2", "stage.val_generate=0", "run=g",
                    "stage.reward_timeout_s=120"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    g = tmp_path / "runs" / "g"
    assert len(column(g, "reward/reward_model")) == 2 and column(g, "reward/failures") == [0.0, 0.0]


@pytest.mark.parametrize(("args", "expected"), [
    (["stage=mpo", "data=synthetic"], "stage=mpo: the train data 'synthetic' has no chosen/rejected pairs"),
    (["stage=mpo", "data=synthetic_pairs", "stage.beta=0"], "stage.beta=0: must be > 0 (the implicit reward"),
    (["stage=reward_model", "data=synthetic"], "stage=reward_model: the train data 'synthetic' has no"),
    (["stage=make_pairs", "stage.k=1"], "stage.k=1: must be >= 2 (a pair needs at least 2"),
])  # fmt: skip
def test_bad_preference_config_is_one_line(tmp_path, args, expected):
    proc = run_cli([*args, *TINY], tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"r1v: error: {expected}"), proc.stderr[-2000:]

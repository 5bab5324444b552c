"""benchmarks/fidelity.py's plumbing without training: the recipe's arguments per data regime and mode, the
controls' arguments re-aimed from recipe.json, and the per-(seed, arm) resume (existing results are skipped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def fid(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the benchmarks import each other by bare name
    import fidelity

    return fidelity


def _plan(**kw):
    plan = {"recipe": "r1v", "data": "synthetic_hard", "quick": True, "benchmark": "synthetic_hard", "eval_limit": 32,
            "eval_args": ["max_new_tokens=256"], "overrides": [("grpo", "stage.lr=1e-3")]}  # fmt: skip
    return {**plan, **kw}


def test_set_arg_replaces_plain_and_plus_forms(fid):
    args = ["a=1", "+b.c=2", "b.cd=3", "checkpoint=x"]
    assert fid.set_arg(args, "b.c", 9) == ["a=1", "b.cd=3", "checkpoint=x", "b.c=9"]
    assert fid.set_arg(args, "checkpoint", "/r/sft")[-1] == "checkpoint=/r/sft"


def test_recipe_args(fid, tmp_path):
    seed = fid.Seed(3, tmp_path, _plan())
    args = seed.recipe_args()
    assert "seed=3" in args and f"paths.runs={tmp_path / 'runs'}" in args and "run=s3" in args
    assert "recipe.eval.benchmark=synthetic_hard" in args and "recipe.eval.limit=32" in args
    grpo = next(a for a in args if a.startswith("+recipe.overrides.grpo="))
    assert "'data=synthetic_hard'" in grpo and "'stage.max_new_tokens=160'" in grpo and "'stage.max_steps=2'" in grpo
    assert grpo.endswith("'stage.lr=1e-3']")  # --override last: it wins
    assert not any(a.startswith("+recipe.overrides.align=") and "data=" in a for a in args)  # align: default scenes
    assert "resume=auto" not in args
    (tmp_path / "runs" / "s3").mkdir(parents=True)
    (tmp_path / "runs" / "s3" / "recipe.json").write_text("{}")
    assert seed.recipe_args()[-1] == "resume=auto"  # an interrupted recipe goes on
    full = fid.Seed(0, tmp_path, _plan(data="synthetic", quick=False, overrides=[])).recipe_args()
    assert not any(a.startswith("+recipe.overrides.") for a in full)  # the recipe as shipped


def test_control_args_from_recipe_json(fid, tmp_path):
    seed = fid.Seed(0, tmp_path, _plan())
    seed.recipe_dir.mkdir(parents=True)
    sft = ["stage=sft", "data=jsonl", f"data.train={seed.recipe_dir}/distill/distilled.jsonl", "stage.max_steps=150",
           f"checkpoint={seed.recipe_dir}/reassemble", "seed=0", f"paths.runs={seed.recipe_dir}", "run=sft",
           "resume=auto"]  # fmt: skip
    (seed.recipe_dir / "recipe.json").write_text(json.dumps({"stages": {"sft": {"args": sft}}}))
    args = seed.stage_args("sft", "sft_extra", checkpoint=seed.recipe_dir / "sft", stage__max_steps=40)
    assert f"paths.runs={seed.controls}" in args and "run=sft_extra" in args and "seed=0" in args
    assert f"checkpoint={seed.recipe_dir / 'sft'}" in args and "stage.max_steps=40" in args
    assert "stage.max_steps=150" not in args and args.count("resume=auto") == 1 and args[-1] == "resume=auto"
    assert f"data.train={seed.recipe_dir}/distill/distilled.jsonl" in args


def test_existing_results_are_skipped(fid, tmp_path, monkeypatch, capsys):
    seed = fid.Seed(0, tmp_path, _plan())
    for arm in fid.ARMS:
        fid.write_json(seed.results / f"{arm}.json", {"arm": arm})
    monkeypatch.setattr(fid, "python_m", lambda *a, **k: pytest.fail("nothing should run"))
    assert seed.run() == {arm: {"arm": arm} for arm in fid.ARMS}
    assert capsys.readouterr().out.count("skipped") == len(fid.ARMS)
    assert not list(seed.results.glob(".*tmp*"))  # atomic writes leave no temporary file


def test_grpo_steps(fid, tmp_path):
    (tmp_path / "metrics.csv").write_text("step,train/loss,val/accuracy\n0,,0.1\n1,0.5,\n2,0.4,\n2,,0.3\n")
    assert fid.grpo_steps(tmp_path, ["stage.max_steps=60"]) == 2
    assert fid.grpo_steps(tmp_path / "none", ["stage.max_steps=60", "stage.max_steps=5"]) == 5


def test_r1v_hard_recipe_args(fid, tmp_path):
    """--recipe r1v_hard carries the regime itself (nothing added but --quick's steps); its reward model gets a few
    quick steps; its RM facts come from metrics.csv and reach the table's note."""
    args = fid.Seed(0, tmp_path, _plan(recipe="r1v_hard", overrides=[])).recipe_args()
    assert "recipe=r1v_hard" in args and not any("data=synthetic_hard" in a or "160" in a for a in args)
    rm = next(a for a in args if a.startswith("+recipe.overrides.reward_model="))
    assert "'stage.max_steps=5'" in rm and "data=" not in rm
    full = fid.Seed(0, tmp_path, _plan(recipe="r1v_hard", quick=False, overrides=[])).recipe_args()
    assert not any(a.startswith("+recipe.overrides.") for a in full)
    (tmp_path / "metrics.csv").write_text("step,train/loss,val/pair_accuracy\n0,0.9,\n1,0.8,\n1,,0.75\n")
    facts = fid.reward_model_facts(tmp_path)
    assert facts == {"steps": 2, "val_pair_accuracy": 0.75} and fid.reward_model_facts(tmp_path / "none") == {}
    from fidelity_report import render

    data = {"plan": _plan(recipe="r1v_hard"), "seeds": [0], "rows": {}, "comparisons": [],
            "steps": {"iterative_steps": {0: 3}, "grpo_steps": {0: 2}}, "drlc_penalty_mean": {0: 1.1},
            "reward_model": {0: facts}}  # fmt: skip
    assert "process reward model (2 steps; held-out pair accuracy per seed 0.75)" in render(data, image=None)


def test_gated_arm_args_and_selection_table(fid, tmp_path, monkeypatch):
    """iterative_gated re-runs the recipe's iterative SFT from the SFT stage with the error set gated and each round
    capped at the recipe's longest round; its selection facts (read from the rounds' selection.json) reach a table
    that sets R1V's error set beside the gated one."""
    seed = fid.Seed(0, tmp_path, _plan())
    seed.recipe_dir.mkdir(parents=True)
    it = ["stage=iterative_sft", "stage.errors.pool=512", f"checkpoint={seed.recipe_dir}/sft", "run=iterative_sft"]
    (seed.recipe_dir / "recipe.json").write_text(json.dumps({"stages": {"iterative_sft": {"args": it}}}))
    for run, used, flaws, gate in (
        (seed.recipe_dir / "iterative_sft", 498, {"none": 200, "loop": 50, "wrong_steps": 60}, {}),
        (seed.controls / "iterative_gated", 339, {"none": 150, "wrong_steps": 51}, {"n_wrong_below_min_score": 159}),
    ):
        (run / "rounds" / "round1").mkdir(parents=True)
        (run / "iterative.json").write_text(json.dumps({"rounds": [{"round": 1, "steps": 32}]}))
        sel = {"tau": 3.0, "n_used": used, "n_rm": 256, "n_wrong": 444, "pool": 512, "pool_accuracy": 0.133,
               "flaws": flaws, **gate}  # fmt: skip
        (run / "rounds" / "round1" / "selection.json").write_text(json.dumps(sel))
    seen = {}
    monkeypatch.setattr(seed, "train_and_eval", lambda run, args: seen.setdefault(run, args) and {"pass@1": 12.5})
    res = seed.iterative_gated({"iterative_rounds": [{"steps": 32}, {"steps": 31}]})
    args = seen["iterative_gated"]
    assert f"checkpoint={seed.recipe_dir / 'sft'}" in args and f"stage.errors.min_score={fid.GATE}" in args
    assert "stage.max_steps_per_round=32" in args and "stage.errors.pool=512" in args and args[-1] == "resume=auto"
    assert res["eval"] == {"pass@1": 12.5} and res["rounds"][0]["n_wrong_below_min_score"] == 159
    assert res["recipe_rounds"][0]["n_wrong_below_min_score"] is None and res["recipe_rounds"][0]["steps"] == 32
    from fidelity_report import selection_table

    row = selection_table({0: res})[-1]
    assert row == "| 0, 1 | 0.13 | 498 (256 / 444) | 110 (loop 50, wrong_steps 60) | 339 (159) | 51 (wrong_steps 51) |"


def test_rm_auc_arm_scores_the_recipes_reward_model(fid, tmp_path, monkeypatch):
    """rm_auc: the recipe's own reward model on paired held-out chains, AUC per flaw kind and over all flawed chains
    (ties half), reported per seed under the table; a recipe without a reward model is skipped, not failed."""
    seed = fid.Seed(1, tmp_path, _plan(recipe="r1v_hard"))
    monkeypatch.setattr(fid, "held_out_chains", lambda n, s: {"n": n, "seed": s})
    raw = {"none": [3.0, 2.0], "loop": [0.0, -1.0], "wrong_steps": [2.0, 4.0]}
    seen = []
    monkeypatch.setattr(fid, "score_held_out", lambda run, chains: seen.append((run, chains)) or dict(raw))
    res = seed.rm_auc({"reward_model": {"steps": 1000}})
    assert seen == [(seed.recipe_dir / "reward_model", {"n": fid.RM_AUC_QUESTIONS, "seed": 1})]
    # wrong_steps: 3>2, 3<4, 2=2 (half), 2<4 → 1.5/4; all: the 4 loop pairs won + 1.5 → 5.5/8
    assert res["auc"] == {"loop": 1.0, "wrong_steps": 0.375, "all": 0.6875}
    assert seed.rm_auc({}) == {"skipped": "the recipe trains no reward model"}
    from fidelity_report import render

    data = {"plan": _plan(recipe="r1v_hard"), "seeds": [1], "rows": {}, "comparisons": [],
            "steps": {"iterative_steps": {1: 3}, "grpo_steps": {1: 2}}, "drlc_penalty_mean": {1: 1.1},
            "reward_model": {1: {"steps": 1000, "val_pair_accuracy": 0.7, "auc": res["auc"]}}}  # fmt: skip
    md = render(data, image=None)
    assert "| wrong_steps | 0.38 |" in md and "| all | 0.69 |" in md and "| seed 1 |" in md


def test_grpo_lr_arms_rerun_grpo_from_iterative_sft_and_compare_with_continued_sft(fid, tmp_path, monkeypatch):
    seed = fid.Seed(0, tmp_path, _plan(), grpo_lrs=("1e-3",))
    assert seed.arms[-1] == "grpo_lr1e-3" and seed.arms[: len(fid.ARMS)] == fid.ARMS
    seed.recipe_dir.mkdir(parents=True)
    grpo = ["stage=grpo", "stage.lr=5e-3", f"checkpoint={seed.recipe_dir}/iterative_sft", "run=grpo"]
    (seed.recipe_dir / "recipe.json").write_text(json.dumps({"stages": {"grpo": {"args": grpo}}}))
    seen = {}
    monkeypatch.setattr(seed, "train_and_eval", lambda run, args: seen.setdefault(run, args) and {"pass@1": 30.0})
    assert seed.grpo_at("1e-3") == {"eval": {"pass@1": 30.0}, "lr": "1e-3"}
    args = seen["grpo_lr1e-3"]
    assert "stage.lr=1e-3" in args and "stage.lr=5e-3" not in args and "run=grpo_lr1e-3" in args
    assert f"checkpoint={seed.recipe_dir}/iterative_sft" in args
    arms = {"recipe": {"evals": {}, "drlc_penalty_mean": 1.3, "iterative_steps": 60, "grpo_steps": 60},
            "sft_continued": {"eval": {"pass@1": 20.0}}}  # fmt: skip
    results = {s: {**arms, "grpo_lr1e-3": {"eval": {"pass@1": 20.0 + d}}} for s, d in ((0, 5.0), (1, 6.0), (2, 7.0))}
    comp = next(c for c in fid.statistics(results)["comparisons"] if c["arm"] == "grpo_lr1e-3")
    assert comp["question"] == "GRPO at lr 1e-3 vs the same steps of continued SFT" and comp["verdict"] == "better"


def test_grpo_lr_values_are_positive_numbers_kept_as_written(fid):
    import argparse

    assert fid.learning_rate("1e-3") == "1e-3"  # the arm is named grpo_lr1e-3, as written
    for bad in ("abc", "0", "-1e-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a positive learning rate"):
            fid.learning_rate(bad)

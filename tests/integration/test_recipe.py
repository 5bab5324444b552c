"""``python -m r1v.recipe``: a shortened R1V recipe runs end to end with lineage and a report, resumes at
stage granularity, and refuses a changed config or an unknown stage in one line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def ov(stage: str, *args: str) -> str:
    """A per-stage override list on the command line (Hydra needs the elements quoted: they hold '=')."""
    return f"+recipe.overrides.{stage}=[" + ",".join(f"'{a}'" for a in args) + "]"


SHORT = [  # every stage as short as lineage, evaluation, report and resume need (learning is tested elsewhere)
    "recipe=r1v",
    "recipe.eval.limit=8",
    ov("align", "stage.max_steps=30", "stage.val_every=30", "stage.val_generate=8"),
    ov("distill", "distill.limit=48"),
    ov("sft", "stage.max_steps=10", "stage.val_every=10", "stage.val_generate=8"),
    ov(
        "iterative_sft",
        "stage.taus=[3]",
        "stage.lrs=[2e-4]",
        "distill.limit=32",
        "stage.errors.pool=16",
        "stage.max_steps_per_round=3",
    ),
    ov("grpo", "stage.max_steps=2", "stage.val_every=2", "stage.val_generate=4", "stage.batch_size=4"),
]


def test_short_r1v_recipe_lineage_report_and_resume(tmp_path):
    proc = run_cli([*SHORT, "run=r"], tmp_path, module="r1v.recipe", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "runs" / "r"
    state = json.loads((folder / "recipe.json").read_text())
    names = ["align", "reassemble", "distill", "sft", "iterative_sft", "grpo"]
    assert list(state["stages"]) == names and all(s["status"] == "done" for s in state["stages"].values())
    sft = state["stages"]["sft"]
    assert sft["checkpoint"] == str(folder / "reassemble")  # lineage: where it started, on what data
    assert f"data.train={folder / 'distill'}/distilled.jsonl" in sft["data"]
    assert "stage.max_steps=10" in sft["args"]
    assert state["stages"]["distill"]["eval"] is None  # data only: nothing to evaluate
    for name in ("align", "reassemble", "sft", "iterative_sft", "grpo"):
        ev = state["stages"][name]["eval"]
        assert ev["questions"] == 8 and 0 <= ev["pass@1"] <= 100, name
    report = (folder / "report.md").read_text()
    assert "| 6 | grpo | iterative_sft |" in report and (folder / "plots" / "stages.png").is_file()
    assert (folder / "plots" / "grpo" / "reward.png").is_file()

    again = run_cli([*SHORT, "run=r", "resume=auto"], tmp_path, module="r1v.recipe", timeout=600)
    said = again.stdout + again.stderr  # Hydra's logging goes to stdout
    assert again.returncode == 0 and said.count("finished earlier; skipped") == 6, said[-2000:]

    changed = run_cli([*SHORT[:1], "recipe.eval.limit=4", *SHORT[2:], "run=r", "resume=auto"], tmp_path,
                      module="r1v.recipe")  # fmt: skip
    assert changed.returncode == 2
    line = changed.stderr.strip().splitlines()[-1]
    assert "the config changed since it started (recipe.eval.limit)" in line and "allow_changes=true" in line


def test_recipe_with_an_unknown_stage_is_one_line(tmp_path):
    proc = run_cli(["recipe=r1v", "recipe.stages=[{name: a, args: ['stage=sfft']}]"], tmp_path, module="r1v.recipe")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "recipe r1v: stage 0 (a): unknown stage 'sfft'" in line and "did you mean 'sft'" in line
    assert not (tmp_path / "runs").exists()  # refused before anything ran

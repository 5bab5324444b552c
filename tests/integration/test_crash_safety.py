"""Kill anywhere, resume exactly: real training subprocesses die at named fault points
(``R1V_FAULT_INJECT``, like ``kill -9``), and ``resume=auto`` must reproduce an uninterrupted run of the
same seed step for step. Also the non-finite guards (``R1V_POISON``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

QUIET = ["logger=csv", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
ALIGN = [*QUIET, "data.n_train=40", "data.n_val=4", "stage.max_steps=12", "stage.val_every=1000",
         "stage.val_generate=0", "stage.ckpt_every=3", "trainer.log_every_n_steps=1"]  # fmt: skip


def column(run: Path, key: str) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[int, float]:
    cwd = tmp_path_factory.mktemp("straight")
    proc = run_cli(["run=s", *ALIGN], cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return column(cwd / "runs" / "s", "train/loss")


@pytest.mark.parametrize("point", ["in_checkpoint_write:6", "after_step:7", "before_step:10"])
def test_killed_at_a_named_point_resumes_exactly(straight, tmp_path, point):
    killed = run_cli(["run=k", *ALIGN], tmp_path, env={"R1V_FAULT_INJECT": point})
    assert killed.returncode == 137, killed.stderr[-2000:]
    ckpts = tmp_path / "runs" / "k" / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)  # no pickled code needed
    if point.startswith("in_checkpoint_write"):  # the step-6 save died before its rename: step 3 survives
        assert last["global_step"] == 3 and list(ckpts.glob(".*.tmp-*"))
    resumed = run_cli(["run=k", "resume=auto", *ALIGN], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(ckpts.glob(".*.tmp-*"))  # the interrupted save's leftover is cleaned up
    again = column(tmp_path / "runs" / "k", "train/loss")
    assert sorted(again) == sorted(straight) == list(range(12))
    for step, loss in straight.items():
        assert again[step] == pytest.approx(loss, abs=1e-6), f"{point}: step {step}"


def test_grpo_killed_mid_rollout_resumes_exactly(reassembled_run, tmp_path):
    """GRPO dies between generation and rewards of a step; the resumed run samples the same completions
    (RNG streams restored) and logs the same rewards and losses as an uninterrupted run."""
    args = [*QUIET, "stage=grpo", "model=tiny_reasoner", f"checkpoint={reassembled_run}", "stage.batch_size=2",
            "stage.group_size=4", "stage.micro_batch_size=8", "stage.max_new_tokens=24", "stage.max_steps=4",
            "stage.ckpt_every=2", "stage.val_every=1000", "stage.val_generate=0", "stage.lr=5e-3",
            "stage.reward_isolation=inline", "stage.completions_every=1"]  # fmt: skip
    assert run_cli(["run=s", *args], tmp_path).returncode == 0
    killed = run_cli(["run=k", *args], tmp_path, env={"R1V_FAULT_INJECT": "mid_rollout:3"})
    assert killed.returncode == 137, killed.stderr[-2000:]
    resumed = run_cli(["run=k", "resume=auto", *args], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    logged = [json.loads(x)["step"] for x in (tmp_path / "runs" / "k" / "completions.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2, 3]  # the steps redone after the resume are not logged twice
    for key in ("reward/total", "completion/length_mean", "train/loss"):
        a, b = column(tmp_path / "runs" / "s", key), column(tmp_path / "runs" / "k", key)
        assert sorted(a) == sorted(b) and len(a) == 4, key
        for step in a:
            assert b[step] == pytest.approx(a[step], abs=1e-5), f"{key} at step {step}: {a[step]} vs {b[step]}"


def test_a_non_finite_loss_skips_its_step_and_a_streak_stops_the_run(tmp_path):
    one = run_cli(["run=one", *ALIGN], tmp_path, env={"R1V_POISON": "nan_loss:4"})
    assert one.returncode == 0, one.stderr[-2000:]
    run = tmp_path / "runs" / "one"
    assert sorted(column(run, "train/loss")) == list(range(12))
    skipped = column(run, "train/nonfinite_skipped")
    assert [skipped[s] for s in range(12)] == [0.0] * 4 + [1.0] * 8  # step 4 was the one skipped
    streak = run_cli(["run=streak", *ALIGN, "stage.max_nonfinite=3"], tmp_path, env={"R1V_POISON": "nan_loss:5+"})
    assert streak.returncode == 2
    err = streak.stderr.strip().splitlines()[-1]
    assert err.startswith("r1v: error: 3 steps in a row with a non-finite loss") and "resume=auto" in err
    last = torch.load(tmp_path / "runs" / "streak" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)  # fmt: skip
    assert last["global_step"] == 6  # steps 5-7 skipped: checkpoint 6 holds step 4's weights, finite
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())

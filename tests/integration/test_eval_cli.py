"""``python -m r1v.eval`` on a trained tiny run: the table, samples and summary agree; bad input is one line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_eval_synthetic_writes_consistent_samples_and_summary(default_run, tmp_path):
    proc = run_cli([f"checkpoint={default_run}", "limit=20", "batch_size=10", f"out={tmp_path / 'ev'}"], tmp_path,
                   module="r1v.eval")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| **all** | 20 |" in proc.stdout and "| count_all |" in proc.stdout
    rows = [json.loads(x) for x in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert len(rows) == summary["questions"] == 20 and all(len(r["completions"]) == 1 for r in rows)
    correct = sum(r["completions"][0]["correct"] for r in rows)
    assert summary["pass@1"] == pytest.approx(100 * correct / 20) and correct > 0  # the aligned model answers some
    assert sum(c["questions"] for c in summary["categories"].values()) == 20
    assert summary["length"]["max"] >= summary["length"]["mean"] > 0


def test_eval_of_a_weights_file_uses_its_run_composition(reassembled_run, tmp_path):
    """A weights file inside a run folder is evaluated with that run's composition (here the reasoner), not
    the default one, whose tensors have the same shapes and would load silently."""
    weights = reassembled_run / "final" / "trainable.safetensors"
    for ckpt, out in ((reassembled_run, "a"), (weights, "b")):
        proc = run_cli([f"checkpoint={ckpt}", "limit=8", f"out={tmp_path / out}"], tmp_path, module="r1v.eval")
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = ((tmp_path / x / "samples.jsonl").read_text() for x in "ab")
    assert a == b


def test_eval_sampling_pass_at_k(default_run, tmp_path):
    proc = run_cli([f"checkpoint={default_run}", "limit=6", "n_samples=3", "k=[1,3]", "temperature=1.0",
                    f"out={tmp_path / 'ev'}"], tmp_path, module="r1v.eval")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n_samples"] == 3 and summary["pass@3"] >= summary["pass@1"]


@pytest.mark.parametrize(("args", "expected"), [
    (["model=tiny_reasoner"], "was trained with another composition (backbone: tiny_instruct (checkpoint) vs "
                              "tiny_reasoner (config))"),
    (["benchmark=math500", "path=/nonexistent/MATH-500"], "benchmark=math500: benchmark 'math500': "
                                                          "/nonexistent/MATH-500 does not exist"),
    (["benchmark=mmu"], "unknown benchmark 'mmu'"),
    (["prompt=chatty"], "prompt=chatty: not a prompt style"),
])  # fmt: skip
def test_eval_bad_input_is_one_line(default_run, tmp_path, args, expected):
    proc = run_cli([f"checkpoint={default_run}", *args], tmp_path, module="r1v.eval")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("r1v: error: "), proc.stderr[-2000:]
    assert expected in proc.stderr.strip().splitlines()[-1]


def test_in_training_evaluation_is_logged_every_n_steps(tmp_path):
    """evaluation.enabled: the harness runs on the held-out set every N steps and at the end, logged with the
    training curves (the default job, 12 steps, every 5: steps 5, 10 and the end)."""
    import csv

    proc = run_cli(["stage.max_steps=12", "stage.val_every=12", "evaluation.enabled=true",
                    "evaluation.every_n_steps=5", "evaluation.limit=8", "logger=csv",
                    "trainer.enable_progress_bar=false", "run=e"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = csv.DictReader((tmp_path / "runs" / "e" / "metrics.csv").open())
    rows = [r for r in metrics if r.get("eval/synthetic/pass@1")]
    assert [int(float(r["step"])) for r in rows] == [5, 10, 12]
    assert all(0 <= float(r["eval/synthetic/pass@1"]) <= 100 for r in rows)


def test_in_training_evaluation_with_a_missing_benchmark_stops_before_training(tmp_path):
    proc = run_cli(["evaluation.enabled=true", "evaluation.benchmark=math500", "+evaluation.knobs.path=/nope"],
                   tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "/nope does not exist" in proc.stderr.strip().splitlines()[-1]

"""stage=grpo on the tiny re-assembled model: it learns, its variants run, its bad inputs get one line."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch

from tests.conftest import one_error_line, run_cli

pytestmark = pytest.mark.slow
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]
GRPO = ["stage=grpo", "model=tiny_reasoner", "stage.lr=5e-3", "stage.max_new_tokens=96", "stage.val_generate=16",
        *QUIET]  # fmt: skip


def metrics(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def test_grpo_raises_the_accuracy_reward(reassembled_run, tmp_path):
    """Adapter-only GRPO from the re-assembled start: the accuracy reward of the last fifth of the steps is
    clearly above the first fifth (3-seed figures: benchmarks/grpo_learning.py)."""
    proc = run_cli([*GRPO, f"checkpoint={reassembled_run}", "stage.max_steps=120", "stage.val_every=120", "run=g"],
                   tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics(tmp_path / "runs" / "g")
    acc = column(rows, "reward/accuracy")
    assert len(acc) == 120
    first, last = statistics.mean(acc[:24]), statistics.mean(acc[-24:])  # measured: +0.08 to +0.13 (3 seeds)
    assert last >= first + 0.05, f"accuracy reward: first fifth {first:.3f}, last fifth {last:.3f}"
    logged = set(rows[0]).union(*rows)
    for key in ("reward/total", "reward/total_std", "reward/format", "completion/length_mean",
                "completion/length_max", "completion/clipped_share", "effective_share", "train/clip_fraction",
                "train/entropy", "time/rollout_s", "time/reference_s", "time/update_s", "reward/failures",
                "val/accuracy"):  # fmt: skip
        assert key in logged and column(rows, key), key
    assert "train/kl" not in logged  # β = 0: no reference model at all
    effective = column(rows, "effective_share")  # a step whose groups are all equal has share 0
    # early on most groups disagree (broken sampling would give identical completions: share 0); later the
    # tiny policy may sharpen until many groups agree, which is GRPO's own dynamics, not asserted
    assert all(0 <= e <= 1 for e in effective) and statistics.mean(effective[:24]) > 0.15
    trained = __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(tmp_path / "runs" / "g" / "final" / "trainable.safetensors"))  # fmt: skip
    assert trained and all(k.startswith("adapter.") for k in trained)
    logged = [json.loads(x) for x in (tmp_path / "runs" / "g" / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(0, 120, 10))  # completions_every: 10
    assert all(len(r["completions"]) == 8 and r["answer"] for r in logged)
    c = logged[0]["completions"][0]
    assert c["reward"] == pytest.approx(c["parts"]["accuracy"] + 0.5 * c["parts"]["format"]) and c["tokens"] > 0


def test_grpo_variants_kl_mu_buffer_dynamic_sampling_and_resume(reassembled_run, tmp_path):
    args = [*GRPO, f"checkpoint={reassembled_run}", "stage.batch_size=4", "stage.group_size=4", "stage.mu=2",
            "stage.micro_batch_size=6", "stage.policy_loss.beta=0.05", "stage.policy_loss.eps_high=0.28",
            "stage.policy_loss.loss_agg=token_mean", "stage.ssb.enabled=true", "stage.dynamic_sampling.enabled=true",
            "stage.max_steps=6", "stage.val_every=6", "stage.ckpt_every=2", "run=v"]  # fmt: skip
    proc = run_cli(args, tmp_path, env={"R1V_FAULT_INJECT": "before_step:4"})
    assert proc.returncode == 137  # killed after two rollout batches (μ = 2 steps each)
    proc = run_cli([*args, "resume=auto"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics(tmp_path / "runs" / "v")
    assert column(rows, "train/kl") and all(k >= 0 for k in column(rows, "train/kl"))
    assert max(column(rows, "ssb/size")) > 0
    # μ = 2: the second update of a batch sees ratios ≠ 1 (its old log-probs are the stored ones)
    assert any(abs(r - 1) > 1e-6 for r in column(rows, "train/ratio_mean"))
    ckpt = torch.load(tmp_path / "runs" / "v" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6 and ckpt["r1v"]["grpo"]["ssb"]["items"]


def test_completions_that_never_close_think_are_scored(reassembled_run, tmp_path, compose, registry):
    proc = run_cli([*GRPO, f"checkpoint={reassembled_run}", "stage.max_new_tokens=3", "stage.max_steps=2",
                    "stage.val_every=2", "stage.val_generate=0", "stage.logp_probe=3", "stage.micro_batch_size=2",
                    "run=short"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics(tmp_path / "runs" / "short")
    # 3 tokens cannot reach </think>: format 0 for all; nearly all are cut at the budget (a draw may end early)
    assert column(rows, "reward/format") == [0.0, 0.0] and min(column(rows, "completion/clipped_share")) > 0.9

    # stage.logp_probe: the chunked, micro-batched, left-padded log-probs written before the first update
    # equal a plain full-logits forward of the same starting model on prompt + reference answer
    from r1v.data.build import build_datasets
    from r1v.model.load import inference_model

    probe = torch.load(tmp_path / "runs" / "short" / "logp_probe.pt", weights_only=False)
    cfg = compose("model=tiny_reasoner", f"checkpoint={reassembled_run}")
    model, processor = inference_model(cfg)
    train, _ = build_datasets(cfg, registry)
    assert probe["ids"] == [train[i].id for i in range(3)]
    for i, logp in enumerate(probe["logp"]):
        enc = processor.encode(train[i], target="answer")
        ids = torch.as_tensor(enc["input_ids"])[None]
        n = len(probe["completion_ids"][i])
        assert ids[0, -n:].tolist() == probe["completion_ids"][i]
        with torch.no_grad():
            logits = model(ids, torch.ones_like(ids), processor.images(train[i])[0]).logits.float()
        ref = torch.log_softmax(logits[0, -n - 1 : -1], -1).gather(1, ids[0, -n:, None])[:, 0]
        torch.testing.assert_close(logp, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stage.group_size=1", "stage.group_size=1: must be >= 2 (GRPO's advantage is relative to the group"),
        ("stage.max_new_tokens=600", "stage.max_new_tokens=600 does not fit the backbone's context of 512 tokens"),
        ("reward=[acuracy]", "no option 'acuracy' in config group 'reward'"),
        ("stage.policy_loss.loss_agg=mean", "stage.policy_loss.loss_agg='mean': expected one of 'seq_mean'"),
        ("stage.rollout_gather=layers", "stage.rollout_gather=layers: must be one of auto, whole, layer"),
    ],
)
def test_bad_grpo_settings_are_one_line(tmp_path, override, message):
    proc = run_cli([*GRPO, override, "stage.max_steps=1", "run=bad"], tmp_path, timeout=120)
    assert message in one_error_line(proc)


def test_row_without_ground_truth_is_one_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "q1", "question": "What is 2+2?", "answer": "4"}) + "\n"
                    + json.dumps({"id": "q2", "question": "What is 3+3?"}) + "\n")  # fmt: skip
    proc = run_cli([*GRPO, "data=jsonl", f"data.train={data}", "data.on_bad_sample=error", "stage.max_steps=1",
                    "run=nogt"], tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("r1v: error:")]
    assert f"{data}:2: missing field 'answer'" in line


def test_full_size_r1v38b_without_weights_stops_with_what_is_missing(tmp_path):
    proc = run_cli(["model=r1v38b", "stage=grpo", "run=big", *QUIET], tmp_path, timeout=300)
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("r1v: error:")]
    assert "model=r1v38b: vision, backbone (38.3B parameters) would start from random weights" in line
    assert "model.backbone.pretrained=<local folder>" in line and "num_hidden_layers" in line


def test_ssb_offline_prefilter_keeps_prompts_with_a_learning_signal(reassembled_run, tmp_path):
    proc = run_cli([*GRPO, f"checkpoint={reassembled_run}", "data.n_train=16", "stage.group_size=4",
                    "stage.batch_size=4", "stage.ssb.enabled=true", "stage.ssb.prefilter=true", "stage.max_steps=2",
                    "stage.val_every=2", "stage.val_generate=0", "run=pf"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "runs" / "pf" / "prefilter.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(16)) and all(len(r["rewards"]) == 4 for r in rows)
    for r in rows:
        assert r["kept"] == (max(r["rewards"]) > min(r["rewards"]))
    assert 0 < sum(r["kept"] for r in rows) < 16
    kept = sum(r["kept"] for r in rows)
    assert f"pre-filter kept {kept} of 16 prompts" in proc.stdout + proc.stderr


def test_a_failing_rollout_engine_ends_the_run_in_one_line(tmp_path):
    """A rollout engine that fails (on the GPU: a device-side assert, after which the CUDA context is dead) ends
    the run at once: one line on stderr naming the engine, the step and the way out, exit 1, the traceback in the
    run's log, the finished steps' metrics and checkpoints kept."""
    args = [*GRPO, "stage.max_new_tokens=8", "stage.batch_size=2", "stage.group_size=2", "stage.max_steps=4",
            "stage.ckpt_every=1", "stage.val_every=100", "run=e"]  # fmt: skip
    proc = run_cli(args, tmp_path, env={"R1V_POISON": "engine_error:2"}, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1] == ("r1v: error: rollout engine 'static' failed at step 2: RuntimeError: CUDA error: device-side "
                         "assert triggered (injected: R1V_POISON=engine_error); try stage.rollout.name=hf "
                         "(log: runs/e/train.log)")  # fmt: skip
    assert "Traceback" not in proc.stderr + proc.stdout
    run = tmp_path / "runs" / "e"
    log = (run / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "in run_engine" in log
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert column(metrics(run), "reward/total") and len(column(metrics(run), "time/rollout_s")) == 2

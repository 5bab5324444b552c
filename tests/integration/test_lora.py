"""stage=grpo with stage.lora on the tiny re-assembled model, a short smoke run (the learning curve is
benchmarks/lora_grpo.py): KL 0 at step 0 against the LoRA-off reference, a resume that restores the LoRA weights,
a checkpoint of LoRA + adapter only, and r1v.load merging (or keeping) the LoRA."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
LORA = "stage.lora={r: 8, alpha: 16, dropout: 0.0, targets: [backbone]}"
ARGS = ["stage=grpo", "model=tiny_reasoner", LORA, "stage.lr=5e-3", "stage.policy_loss.beta=0.04", "stage.batch_size=4",
        "stage.group_size=4", "stage.max_new_tokens=48", "stage.max_steps=3", "stage.ckpt_every=2",
        "stage.val_every=1000", "stage.val_generate=0", "trainer.enable_progress_bar=false", "logger=csv",
        "run=lora"]  # fmt: skip


def check_lora_grpo(start: Path, cwd: Path) -> None:
    """The whole check, from a re-assembled run ``start`` (a function: benchmarks and a local run call it too)."""
    import r1v
    from r1v.data.synthetic import generate
    from r1v.model.lora import lora_layers

    args = [*ARGS, f"checkpoint={start}"]
    proc = run_cli(args, cwd, env={"R1V_FAULT_INJECT": "before_step:2"})
    assert proc.returncode == 137, proc.stderr[-3000:]  # killed after the step-2 checkpoint
    proc = run_cli([*args, "resume=auto"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = cwd / "runs" / "lora"
    kl = [float(r["train/kl"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("train/kl")]
    assert len(kl) == 3 and abs(kl[0]) < 1e-6  # the reference is the starting policy
    assert kl[2] > 1e-4  # after the resume the LoRA weights are the trained ones, not B = 0 again
    from safetensors import safe_open

    with safe_open(str(run / "final" / "trainable.safetensors"), framework="pt") as f:
        names, meta = set(f.keys()), f.metadata()
    assert names and all(n.startswith("adapter.") or ".lora_" in n for n in names)
    assert any(".lora_B." in n for n in names) and '"r": 8' in meta["r1v.lora"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert {k.removeprefix("model.") for k in ckpt["state_dict"]} == names and ckpt["r1v"]["lora"]["r"] == 8

    merged, kept = r1v.load(str(run), device="cpu"), r1v.load(str(run), device="cpu", merge_lora=False)
    assert not lora_layers(merged.vlm) and len(lora_layers(kept.vlm)) == 4 * 7  # 4 layers × 7 projections
    b = merged.processor.collate([merged.processor.encode(generate(i, "val")[0], "reasoning") for i in range(2)],
                                 "right")  # fmt: skip
    with torch.no_grad():
        one, two = (m.vlm(b["input_ids"], b["attention_mask"], b["pixel_values"]).logits for m in (merged, kept))
    torch.testing.assert_close(one, two, rtol=1e-4, atol=1e-4)
    assert merged.generate(generate(0, "val")[0], max_new_tokens=8) == kept.generate(generate(0, "val")[0],
                                                                                      max_new_tokens=8)  # fmt: skip


def test_grpo_with_lora_resumes_and_loads(reassembled_run, tmp_path):
    check_lora_grpo(reassembled_run, tmp_path)

"""LoRA under real DeepSpeed ZeRO-3 on the CPU (tests/unit/cpu_deepspeed_train.py): the LoRA layers are injected in
``configure_model`` under ``zero.Init``, where PEFT's zero-initialisation of B would write into empty placeholders
(``r1v.model.lora.apply_lora`` redoes it gathered). One GRPO step with β > 0: KL 0 at step 0 (B = 0, the LoRA-off
reference is the policy), the static engine's rollout on the gathered merged weights, and LoRA weights that moved."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.unit.test_zero3_train_cpu import needs_deepspeed, train


@needs_deepspeed
def test_grpo_with_lora_under_zero3(reassembled_run, tmp_path):
    """From the re-assembled run (its groups disagree: a learning signal at step 0)."""
    args = ["trainer=deepspeed_z3", "model=tiny_reasoner", f"checkpoint={reassembled_run}", "stage=grpo",
            "stage.max_steps=1", "stage.batch_size=4", "stage.group_size=4", "stage.micro_batch_size=8",
            "stage.max_new_tokens=64", "stage.policy_loss.beta=0.04", "stage.lr=1e-2", "stage.rollout.compile=false",
            "stage.lora={r: 8, alpha: 16, dropout: 0.0, targets: [backbone, vision]}"]  # fmt: skip
    weights = train(tmp_path, "z3lora", *args)
    rows = list(csv.DictReader((tmp_path / "runs" / "z3lora" / "metrics.csv").open()))
    kl = [float(r["train/kl"]) for r in rows if r.get("train/kl")]
    assert kl == [pytest.approx(0.0, abs=1e-6)]
    assert float(next(r["effective_share"] for r in rows if r.get("effective_share"))) > 0  # a learning signal
    assert {k.split(".")[0] for k in weights} == {"vision", "adapter", "backbone"}
    lora_b = [v for k, v in weights.items() if ".lora_B." in k]
    assert lora_b and all(".lora_" in k or k.startswith("adapter.") for k in weights)
    assert sum(float(torch.count_nonzero(v)) for v in lora_b) > 0  # B left 0 and took its first step
    assert all(float(v.abs().max()) < 0.05 for v in lora_b)  # one Adam step of lr 1e-2 from B = 0, not a random init

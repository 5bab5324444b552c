"""GPU: GRPO on an R1V-shaped model (r1v_small: InternViT-300M + Qwen2.5-1.5B shapes, random weights) for 20 steps
under trainer=gpu and trainer=deepspeed_z2 on one GPU, with the static engine's CUDA graphs replayed rollout after
rollout (it died at its second or third rollout when a tensor the graphs read was rebuilt per call)."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import statistics

import pytest
import torch

from tests.conftest import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
STEPS = int(os.environ.get("R1V_GPU_GRPO_STEPS", "20"))  # fewer for a quick check of a change
ARGS = ["model=r1v_small", "stage=grpo", "stage.batch_size=8", "stage.group_size=8", "stage.micro_batch_size=8",
        "stage.val_every=1000", "stage.val_generate=0", "stage.ckpt_every=0", "stage.policy_loss.beta=0.04",
        "stage.lr=1e-6", "stage.max_new_tokens=512", f"stage.max_steps={STEPS}", "logger=csv",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.devices=1"]  # fmt: skip
TRAINERS = ["gpu", pytest.param("deepspeed_z2", marks=pytest.mark.skipif(not importlib.util.find_spec("deepspeed"),
                                                                         reason="needs deepspeed"))]  # fmt: skip


@pytest.mark.parametrize("trainer", TRAINERS)
def test_grpo_runs_twenty_steps_on_an_r1v_shaped_model(tmp_path, trainer):
    proc = run_cli([*ARGS, f"trainer={trainer}", f"run={trainer}"], tmp_path, env={"TORCH_CUDA_ARCH_LIST": "9.0"},
                   timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader((tmp_path / "runs" / trainer / "metrics.csv").open()))
    rollout = [float(r["time/rollout_s"]) for r in rows if r.get("time/rollout_s")]
    reward = [float(r["reward/total"]) for r in rows if r.get("reward/total")]
    length = [float(r["completion/length_max"]) for r in rows if r.get("completion/length_max")]
    kl = [float(r["train/kl"]) for r in rows if r.get("train/kl")]
    assert len(rollout) == len(reward) == len(kl) == STEPS
    assert all(math.isfinite(x) for x in reward + kl) and max(length) <= 512
    # the first rollout captures (and compiles); later ones replay: a re-capture every step would show here
    later = statistics.median(rollout[1:])
    print(f"{trainer}: rollout s first {rollout[0]:.1f}, median after {later:.2f}; kl last {kl[-1]:.2e}")
    assert later < rollout[0]

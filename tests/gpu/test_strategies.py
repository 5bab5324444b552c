"""GPU: the default job under trainer=gpu, deepspeed_z2 and deepspeed_z3 (skipped without CUDA).

ZeRO-3 builds the model inside ``configure_model`` on partitioned parameters; weights must still be
loaded whole (``r1v.runtime.weights.gathered``), so all three strategies start from the same loss.
"""

from __future__ import annotations

import csv
import importlib.util
import math

import pytest
import torch

from tests.conftest import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
COMMON = ["stage.max_steps=6", "stage.val_every=6", "stage.val_generate=8", "stage.ckpt_every=6",
          "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.devices=1",
          "logger=csv"]  # fmt: skip


def train_losses(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, compose):
    cwd = tmp_path_factory.mktemp("gpu")
    names = ["gpu"]
    if importlib.util.find_spec("deepspeed"):
        names += ["deepspeed_z2", "deepspeed_z3"]
    # One adapter init for all: zero.Init draws random init on the GPU, so only loaded weights compare.
    from safetensors.torch import save_file

    from r1v.core.registry import get_registry
    from r1v.model.build import build

    torch.manual_seed(0)
    model, _ = build(compose()["model"], get_registry())
    save_file({k: v.contiguous() for k, v in model.adapter.state_dict().items()}, str(cwd / "adapter.safetensors"))
    out = {}
    for name in names:
        proc = run_cli([f"trainer={name}", f"run={name}", f"model.adapter.pretrained={cwd / 'adapter.safetensors'}",
                        *COMMON], cwd, env={"TORCH_CUDA_ARCH_LIST": "9.0"})  # fmt: skip
        assert proc.returncode == 0, f"{name}: {proc.stderr[-4000:]}"
        out[name] = train_losses(cwd / "runs" / name)
    return out


def test_gpu_run_learns(runs):
    losses = runs["gpu"]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


@pytest.mark.skipif(not importlib.util.find_spec("deepspeed"), reason="needs deepspeed")
def test_zero2_and_zero3_start_where_plain_gpu_starts(runs):
    first = {k: v[0] for k, v in runs.items()}
    assert first["deepspeed_z3"] == pytest.approx(first["gpu"], rel=0.05), first
    assert first["deepspeed_z2"] == pytest.approx(first["gpu"], rel=0.05), first
    for name in ("deepspeed_z2", "deepspeed_z3"):  # and they learn alike (bf16 weights vs mixed precision)
        assert runs[name][-1] == pytest.approx(runs["gpu"][-1], abs=0.15), runs

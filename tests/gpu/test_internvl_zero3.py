"""GPU: a model from an InternVL-chat folder (``model.internvl=``) under plain GPU and DeepSpeed ZeRO-3.

Under ZeRO-3 the parts are built partitioned and every tensor is gathered while it is loaded, so both runs start
from the same loss; the ZeRO-3 run then exports with ``python -m r1v export`` (frozen parts equal the source).
"""

from __future__ import annotations

import csv
import importlib.util

import pytest
import torch

from tests.conftest import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(not importlib.util.find_spec("deepspeed"), reason="needs deepspeed")]  # fmt: skip


def test_zero3_loads_an_internvl_folder_whole_and_exports(tmp_path):
    from r1v.model.internvl import iter_tensors
    from tests.unit.test_internvl_io import write_folder

    src = write_folder(tmp_path / "src")
    first = {}
    for name in ("gpu", "deepspeed_z3"):
        proc = run_cli(["model=internvl_chat", f"model.internvl={src}", f"trainer={name}", f"run={name}",
                        "stage=sft", "stage.max_steps=3", "stage.val_every=1000", "stage.val_generate=0",
                        "stage.batch_size=4", "data.n_train=16", "data.n_val=2", "logger=csv",
                        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.devices=1",
                        f"paths.runs={tmp_path}"], tmp_path, env={"TORCH_CUDA_ARCH_LIST": "9.0"})  # fmt: skip
        assert proc.returncode == 0, f"{name}: {proc.stderr[-4000:]}"
        with open(tmp_path / name / "metrics.csv") as f:
            first[name] = next(float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss"))
    print(first)
    assert first["deepspeed_z3"] == pytest.approx(first["gpu"], rel=0.05), first
    proc = run_cli(["export", str(tmp_path / "deepspeed_z3"), str(tmp_path / "out")], tmp_path, module="r1v")
    assert proc.returncode == 0, proc.stderr[-4000:]
    exported, source = dict(iter_tensors(tmp_path / "out")), dict(iter_tensors(src))
    assert sorted(exported) == sorted(source)
    assert all(torch.equal(t, source[k]) for k, t in exported.items() if not k.startswith("mlp1."))

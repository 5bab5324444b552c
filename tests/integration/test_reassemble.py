"""stage=reassemble: the aligned adapter in front of the reasoner backbone, as R1V's step 2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import held_out_accuracy, one_error_line, run_cli

pytestmark = pytest.mark.slow
QUIET = ["trainer.enable_progress_bar=false", "logger=csv"]


def test_reassembled_reasoner_reads_images_without_training(default_run, tmp_path, registry, compose):
    from r1v.model.build import build
    from r1v.model.load import load_trainable

    proc = run_cli(["stage=reassemble", "model=tiny_reasoner", f"checkpoint={default_run}", "run=re", *QUIET],
                   tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "runs" / "re"
    aligned = load_file(str(default_run / "final" / "trainable.safetensors"))
    carried = load_file(str(out / "final" / "trainable.safetensors"))
    assert carried.keys() == aligned.keys() and all(torch.equal(carried[k], aligned[k]) for k in aligned)
    report = json.loads((out / "reassembly.json").read_text())
    assert report["backbone"] == "tiny_reasoner" and report["left_behind"] == 0
    assert json.loads((out / "run.json").read_text())["components"]["backbone"]["name"] == "tiny_reasoner"

    torch.manual_seed(0)
    model, processor = build(compose("model=tiny_reasoner")["model"], registry)
    model.eval()
    before = held_out_accuracy(model, processor, registry)
    load_trainable(model, str(out))
    after = held_out_accuracy(model, processor, registry)
    assert after >= before + 0.15, f"reasoner on images: random adapter {before:.2f}, reassembled {after:.2f}"


def test_width_mismatch_is_one_line(tmp_path):
    from r1v.model.parts.mlp import MLPAdapter

    adapter = MLPAdapter(in_features=64, llm_hidden=96)  # trained for a 96-wide backbone
    save_file(
        {f"adapter.{k}": v.contiguous() for k, v in adapter.state_dict().items()}, str(tmp_path / "a.safetensors")
    )
    proc = run_cli(["stage=reassemble", "model=tiny_reasoner", f"checkpoint={tmp_path / 'a.safetensors'}", *QUIET],
                   tmp_path)  # fmt: skip
    assert "trained for a backbone of width 96, the new backbone has width 128" in one_error_line(proc)


def test_reassemble_needs_a_checkpoint(tmp_path):
    proc = run_cli(["stage=reassemble", "model=tiny_reasoner", *QUIET], tmp_path)
    assert proc.returncode == 2 and "stage=reassemble needs checkpoint=" in proc.stderr

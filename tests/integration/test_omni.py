"""R1V's first two steps on audio (issue 26): aligning the audio adapter with the omni substitute LM (encoders and
LM frozen) lowers the loss, and re-assembly onto the omni reasoner carries both adapters over bit-identically."""

from __future__ import annotations

import csv

import pytest
import torch

pytest.importorskip("soxr")

STEPS = 300
AUDIO_TASKS = ("beeps", "higher")


@pytest.fixture(scope="module")
def omni_align(tmp_path_factory):
    """``stage=align model=tiny_omni data=synthetic_omni`` on the audio questions, both adapters training."""
    from tests.conftest import run_cli

    tmp = tmp_path_factory.mktemp("omni")
    proc = run_cli(["model=tiny_omni", "data=synthetic_omni", f"data.tasks=[{','.join(AUDIO_TASKS)}]",
                    "stage.trainable=[adapter,audio_adapter]", f"stage.max_steps={STEPS}", "stage.lr=1e-2",
                    f"stage.val_every={STEPS}",
                    "stage.val_generate=0", "stage.ckpt_every=0", "run=align", "logger=csv",
                    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"], tmp)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def test_the_audio_align_run_lowers_the_loss_and_the_substitute_reads_the_clips_text(omni_align, registry):
    """The loss falls; the substitute answers the audio questions from the clips' text (the alignment's ceiling).
    Not asserted: held-out accuracy from the clips themselves ≥ 0.8 × that ceiling — the same command gave 0.63
    (0.84×) on one machine and 0.34 (chance) in a CI run, so the alignment is not yet reliable (issue 26's note);
    benchmarks/omni_recipe.py measures it over seeds."""
    from r1v.data.synthetic_omni import described, generate
    from r1v.evaluation.described import described_accuracy

    run = omni_align / "runs" / "align"
    losses = [float(r["train/loss"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("train/loss")]
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10, (losses[:10], losses[-10:])
    samples = [generate(i, "val", tasks=AUDIO_TASKS) for i in range(96)]
    text = described_accuracy(registry.build("backbone", "tiny_instruct_omni"), samples, described)
    assert text["beeps"] >= 0.9 and text["all"] >= 0.6, text


def test_reassembly_carries_both_adapters_bit_identically(omni_align):
    from safetensors.torch import load_file

    from tests.conftest import run_cli

    proc = run_cli(["stage=reassemble", "model=tiny_omni_reasoner", f"checkpoint={omni_align / 'runs' / 'align'}",
                    "run=re"], omni_align)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    aligned = load_file(str(omni_align / "runs" / "align" / "final" / "trainable.safetensors"))
    carried = load_file(str(omni_align / "runs" / "re" / "final" / "trainable.safetensors"))
    assert {k.split(".")[0] for k in carried} == {"adapter", "audio_adapter"}
    assert carried.keys() == aligned.keys() and all(torch.equal(carried[k], aligned[k]) for k in aligned)

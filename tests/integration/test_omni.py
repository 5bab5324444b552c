"""R1V's first two steps on audio (issue 26): aligning the audio adapter with the omni substitute LM (encoders and
LM frozen, the substitute reading each clip's text as the teacher: stage.text_teacher) lowers the loss and answers
held-out audio questions nearly as well as the substitute given the text; re-assembly onto the omni reasoner
carries both adapters over bit-identically."""

from __future__ import annotations

import csv

import pytest
import torch

pytest.importorskip("soxr")

STEPS = 600
AUDIO_TASKS = ("beeps", "higher")


@pytest.fixture(scope="module")
def omni_align(tmp_path_factory):
    """``stage=align model=tiny_omni data=synthetic_omni`` on the audio questions, both adapters training, with the
    text teacher; greedy answers to the first 96 held-out questions at the end."""
    from tests.conftest import run_cli

    tmp = tmp_path_factory.mktemp("omni")
    proc = run_cli(["model=tiny_omni", "data=synthetic_omni", f"data.tasks=[{','.join(AUDIO_TASKS)}]",
                    "stage.trainable=[adapter,audio_adapter]", f"stage.max_steps={STEPS}", "stage.lr=1e-3",
                    "stage.text_teacher=10", "stage.weight_decay=0", f"stage.val_every={STEPS}",
                    "stage.val_generate=96", "stage.ckpt_every=0", "run=align", "logger=csv",
                    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"], tmp)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def test_the_audio_align_run_lowers_the_loss_and_reaches_most_of_what_the_text_gives(omni_align, registry):
    """The loss falls; the substitute answers the audio questions from the clips' text (the alignment's ceiling),
    and the aligned model answers the same 96 held-out questions from the clips at ≥ 0.8 × that ceiling (the
    image default's yardstick). Measured: 0.73 from the clips with 1 and with 2 threads, against 0.74 from the text;
    without the teacher 300–900 steps reached 0.42–0.44 at every learning rate tried, and at lr 3e-3 the teacher
    run gave 0.67 with 1 thread and 0.47 with 2 (benchmarks/README.md)."""
    from r1v.data.synthetic_omni import described, generate
    from r1v.evaluation.described import described_accuracy

    rows = list(csv.DictReader((omni_align / "runs" / "align" / "metrics.csv").open()))

    def column(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key)]

    losses = column("train/loss")
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10, (losses[:10], losses[-10:])
    samples = [generate(i, "val", tasks=AUDIO_TASKS) for i in range(96)]
    text = described_accuracy(registry.build("backbone", "tiny_instruct_omni"), samples, described)
    assert text["beeps"] >= 0.9 and text["all"] >= 0.6, text
    teacher = column("train/text_teacher")
    assert sum(teacher[-10:]) < 0.2 * sum(teacher[:10]), (teacher[:10], teacher[-10:])
    missing = column("train/text_teacher_missing")
    assert missing and sum(missing) == 0  # every omni sample carries its text view
    val = column("val/accuracy")
    assert val[-1] >= 0.8 * text["all"], (val, text)


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

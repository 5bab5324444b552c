"""GPU: the SFT stage's answer loss and issue 26's text teacher on CUDA under bf16-mixed — the chunked answer NLL
equals the whole-logits one, and an audio align run with ``stage.text_teacher`` trains with finite losses and pulls
the media's states towards their text's."""

from __future__ import annotations

import csv
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from r1v.stages.sft import answer_nll
from tests.conftest import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_chunked_answer_nll_equals_the_whole_logits_on_cuda():
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 1000, bias=False, device="cuda")
    hidden = torch.randn(3, 40, 64, device="cuda", requires_grad=True)  # (B, L, D)
    labels = torch.randint(0, 1000, (3, 40), device="cuda")
    labels[:, :25] = -100  # the prompt
    labels[1, 35:] = -100  # a padded row
    with torch.autocast("cuda", dtype=torch.bfloat16):
        whole = answer_nll(head, hidden, labels, 0)
        chunked = answer_nll(head, hidden, labels, 7)
    logits = head(hidden[:, :-1].float())  # fp32 reference: position t predicts token t+1
    ref = F.cross_entropy(logits.reshape(-1, 1000), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.isfinite(whole) and torch.isfinite(chunked)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-5)
    assert whole.item() == pytest.approx(ref.item(), rel=2e-2)  # bf16 logits against fp32
    (g,) = torch.autograd.grad(chunked, hidden)
    assert torch.isfinite(g).all() and g[:, :24].abs().sum() == 0  # no gradient before the first answer token


def test_text_teacher_align_trains_on_the_gpu(tmp_path):
    steps = 80
    proc = run_cli(["model=tiny_omni", "data=synthetic_omni", "data.tasks=[beeps,higher]", "trainer=gpu",
                    "stage.trainable=[adapter,audio_adapter]", f"stage.max_steps={steps}", "stage.lr=1e-3",
                    "stage.text_teacher=10", "stage.weight_decay=0", f"stage.val_every={steps}",
                    "stage.val_generate=16", "stage.ckpt_every=0", "run=align", "logger=csv",
                    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"], tmp_path,
                   timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader((tmp_path / "runs" / "align" / "metrics.csv").open()))
    loss = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    teacher = [float(r["train/text_teacher"]) for r in rows if r.get("train/text_teacher")]
    missing = [float(r["train/text_teacher_missing"]) for r in rows if r.get("train/text_teacher_missing")]
    assert loss and teacher and all(map(math.isfinite, loss + teacher))
    k = max(1, len(teacher) // 4)
    first, last = statistics.mean(teacher[:k]), statistics.mean(teacher[-k:])
    print(f"text teacher distance: first quarter {first:.4f}, last {last:.4f}; loss {loss[0]:.3f} → {loss[-1]:.3f}")
    assert last < first  # the media's states move towards their text's
    assert statistics.mean(loss[-k:]) < statistics.mean(loss[:k])
    assert sum(missing) == 0  # every synthetic_omni clip has a text twin

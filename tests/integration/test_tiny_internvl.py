"""model=tiny_internvl, the tiny model in InternVL-chat form: align → reassemble → sft → ``r1v export`` →
re-import with ``model=internvl_chat`` gives the run's model exactly (a few steps per stage)."""

from __future__ import annotations

import pytest
import torch

from r1v.data.synthetic import generate
from tests.conftest import run_cli

pytestmark = pytest.mark.slow
QUIET = ["logger=csv", "trainer.enable_progress_bar=false"]
SHORT = ["stage.max_steps=2", "stage.val_every=1000", "stage.val_generate=0", "stage.batch_size=2",
         "data.n_train=8", "data.n_val=2", *QUIET]  # fmt: skip


def logits(model, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, logits) of two held-out samples encoded by ``processor`` (its tokenizer and chat template)."""
    samples = [generate(i, "val")[0] for i in range(2)]
    batch = processor.collate([processor.encode(s, "reasoning") for s in samples], "right")
    with torch.no_grad():
        out = model.eval()(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits
    return batch["input_ids"], out


def test_align_reassemble_sft_export_reimport(tmp_path, compose, registry):
    from omegaconf import OmegaConf

    from r1v.__main__ import main
    from r1v.model.build import build
    from r1v.model.load import load_trainable

    runs = tmp_path / "runs"
    for args in (["model=tiny_internvl", "run=align", *SHORT],
                 ["stage=reassemble", "model=tiny_internvl", "backbone=tiny_reasoner", f"checkpoint={runs / 'align'}",
                  "run=re", *QUIET],
                 ["stage=sft", "model=tiny_internvl", "backbone=tiny_reasoner", f"checkpoint={runs / 're'}",
                  "run=sft", *SHORT]):  # fmt: skip
        proc = run_cli(args, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["export", str(runs / "sft"), str(tmp_path / "internvl")]) == 0

    # The run's model, rebuilt from its config and trained weights, against the exported folder re-imported.
    cfg = OmegaConf.to_container(OmegaConf.load(runs / "sft" / "config.yaml"), resolve=True)
    assert (cfg["model"]["vision"]["name"], cfg["model"]["backbone"]["name"]) == ("internvit_tiny_pretrained",
                                                                                 "tiny_reasoner")  # fmt: skip
    ours, ours_proc = build(cfg["model"], registry)
    load_trainable(ours, str(runs / "sft"))
    again, again_proc = build(compose("model=internvl_chat", f"model.internvl={tmp_path / 'internvl'}")["model"],
                              registry)  # fmt: skip
    ids, expected = logits(ours, ours_proc)
    ids_again, got = logits(again, again_proc)
    assert torch.equal(ids_again, ids)  # the exported tokenizer and chat template encode the same tokens
    assert torch.equal(got, expected)  # same fp32 tensors, same code: bit-identical, no tolerance needed


def test_default_model_is_unchanged(compose):
    """The default job still composes the timm tiny ViT + instruct LM (MANIFEST.json pins their files)."""
    model = compose()["model"]
    assert (model["preset"], model["vision"]["name"], model["backbone"]["name"]) == ("tiny", "tiny", "tiny_instruct")

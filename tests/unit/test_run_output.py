"""What a run prints: a progress bar that fits step-bounded runs, r1v's own model summary, no advertisements."""

from __future__ import annotations

from types import SimpleNamespace

from r1v.runtime.progress import StepProgressBar, rate_text


def test_slow_steps_read_as_seconds_per_step_and_the_epoch_has_no_minus_two():
    assert rate_text(None) == "–" and rate_text(4.07) == "4.07it/s" and rate_text(1 / 95.2) == "95.2 s/it"
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=120)
    assert bar._get_train_description(0) == "Epoch 0 (of 120 steps)"
    bar._trainer = SimpleNamespace(max_epochs=3, max_steps=-1)
    assert bar._get_train_description(1) == "Epoch 1/2"


def test_the_trainer_uses_the_step_bar_and_r1vs_summary(compose, tmp_path):
    """Lightning's model summary (which prints ``Total FLOPs: 0``) is off; the stage logs parameters per part."""
    from lightning.pytorch.callbacks import ModelSummary

    from r1v.stages.setup import build_trainer
    from r1v.stages.sft import SFTStage

    cfg = compose("trainer.enable_progress_bar=true")
    trainer = build_trainer(cfg, tmp_path)
    assert isinstance(trainer.progress_bar_callback, StepProgressBar)
    assert not any(isinstance(c, ModelSummary) for c in trainer.callbacks)
    stage = SFTStage(cfg)
    stage.configure_model()
    assert stage.summary() == ("vision tiny 0.15M (frozen); adapter mlp 0.05M (trainable); backbone tiny_instruct "
                               "0.84M (frozen); 0.05M of 1.04M parameters train")  # fmt: skip

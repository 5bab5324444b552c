"""The progress bar of a run: Lightning's rich bar, made to fit runs bounded by steps rather than epochs.

- The description says ``Epoch 3`` (and the step budget) instead of ``Epoch 3/-2`` when ``max_epochs`` is -1.
- The speed column switches to seconds per batch below one batch a second: a GRPO step of minutes reads
  ``95.2 s/it``, not ``0.00it/s``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from rich.progress import ProgressColumn
from rich.text import Text


class RateColumn(ProgressColumn):
    """``12.34it/s``, or ``95.2 s/it`` for slow steps; ``–`` before the first one finishes."""

    def __init__(self, style: Any = None) -> None:
        self.style = style
        super().__init__()

    def render(self, task: Any) -> Text:
        return Text(rate_text(task.speed), style=self.style or "")


def rate_text(speed: float | None) -> str:
    if not speed:
        return "–"
    return f"{speed:.2f}it/s" if speed >= 1 else f"{1 / speed:.1f} s/it"


class StepProgressBar(RichProgressBar):
    """See the module docstring."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        text = f"Epoch {current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            text += f"/{trainer.max_epochs - 1}"
        if trainer.max_steps and trainer.max_steps > 0:
            text += f" (of {trainer.max_steps} steps)"
        return text

    def configure_columns(self, trainer: Any) -> list:
        columns = super().configure_columns(trainer)
        return [*columns[:-1], RateColumn(style=self.theme.processing_speed)]  # the last: Lightning's it/s

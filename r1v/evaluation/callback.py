"""In-training evaluation: the same harness as ``python -m r1v.eval`` on a held-out benchmark every N
optimizer steps (and at the end), logged as ``eval/<benchmark>/pass@1`` next to the training curves.

Enabled with ``evaluation.enabled=true`` (conf/evaluation/default.yaml). Every rank evaluates the same
questions (under ZeRO-3 the decode loop is collective: parameters gathered once, hooks lifted, see
:func:`r1v.runtime.weights.decode_ready`), so the logged value needs no reduction. Greedy, one sample per question.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import Callback

from r1v.evaluation.scoring import score

log = logging.getLogger(__name__)


class EvalCallback(Callback):
    def __init__(self, benchmark: str = "synthetic", every_n_steps: int = 100, limit: int | None = 64,
                 max_new_tokens: int = 96, batch_size: int = 16, prompt: str = "auto",
                 knobs: dict[str, Any] | None = None) -> None:  # fmt: skip
        if every_n_steps < 1:
            raise ValueError(f"evaluation.every_n_steps={every_n_steps}: must be ≥ 1")
        self.benchmark, self.every, self.limit = benchmark, int(every_n_steps), limit
        self.max_new_tokens, self.batch_size, self.prompt = int(max_new_tokens), int(batch_size), prompt
        self.knobs = dict(knobs or {})
        self._items: list[Any] | None = None
        self._last = -1
        self._bucket = 0  # how many multiples of every_n_steps have been evaluated (GRPO's μ may skip steps)

    def items(self) -> list[Any]:
        if self._items is None:
            from r1v.core.config import build_plugin
            from r1v.core.registry import get_registry

            node = {"name": self.benchmark, **self.knobs, **({"limit": self.limit} if self.limit else {})}
            self._items = build_plugin(get_registry(), "benchmark", node, f"evaluation.benchmark={self.benchmark}")
        return self._items

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.items()  # a missing benchmark file stops the run before training, not at step N

    def _evaluate(self, trainer: Any, pl_module: Any) -> None:
        from r1v.evaluation.harness import generate

        step = trainer.global_step
        if step == self._last or getattr(pl_module, "model", None) is None:
            return
        self._last = step
        gather, engine = pl_module.generation_engine()
        items, correct = self.items(), 0
        was_training = pl_module.model.training
        pl_module.model.eval()
        with pl_module.decode_ready(gather), trainer.precision_plugin.forward_context():
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                rows = generate(engine, pl_module.model, pl_module.processor, batch, 1, self.max_new_tokens, True,
                                self.prompt)  # fmt: skip
                for item, (ids,) in zip(batch, rows, strict=True):
                    correct += score(item, pl_module.processor.decode_completion(ids))[0]
        pl_module.model.train(was_training)
        value = 100.0 * correct / len(items)
        for lg in trainer.loggers:  # straight to the loggers: callbacks' self.log is not allowed in every hook
            lg.log_metrics({f"eval/{self.benchmark}/pass@1": value}, step=step)
            lg.save()
        log.info("eval %s at step %d: pass@1 %.1f (%d questions)", self.benchmark, step, value, len(items))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step // self.every > self._bucket:
            self._bucket = trainer.global_step // self.every
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._evaluate(trainer, pl_module)

"""Ctrl-C (SIGINT) or SIGTERM during training: finish the step, save a checkpoint, stop, say how to continue.

The signal only sets a flag; at the next step boundary every rank agrees on it (one all-reduce of a boolean,
so ranks that did not get the signal stop at the same step), the trainer saves ``checkpoints/step<N>.ckpt``
and stops, and ``r1v.train`` prints the ``resume=auto`` command and exits with 128 + the signal number, without
writing the final weights of an unfinished run. A second Ctrl-C stops at once (Lightning's own interrupt).
``R1V_FAULT_INJECT=sigint:<n>`` sends the signal to this process at the start of step n+1 (tests).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop(Callback):
    """See the module docstring; ``folder`` is the run's checkpoint folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.requested: int | None = None  # the signal received
        self.saved: Path | None = None  # the checkpoint written when stopping
        self.step: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:  # the second Ctrl-C: stop now
            self.restore()
            raise KeyboardInterrupt
        self.requested = signum
        sys.stderr.write(f"\nr1v: {signal.Signals(signum).name} received: stopping after this step with a "
                         "checkpoint (Ctrl-C again to stop at once, without one)\n")  # fmt: skip
        sys.stderr.flush()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        spec = os.environ.get("R1V_FAULT_INJECT", "")
        if spec.startswith("sigint:") and int(spec.split(":", 1)[1]) == trainer.global_step:
            os.kill(os.getpid(), signal.SIGINT)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False)
        if not stop or self.saved is not None:
            return
        if self.requested is None:  # another rank got the signal: this one stops with it
            self.requested = signal.SIGTERM
        self.step = trainer.global_step
        path = self.folder / f"step{self.step:06d}.ckpt"
        if not path.exists():  # the periodic checkpoint of this very step may have been written already
            trainer.save_checkpoint(path)
        self.saved = path
        trainer.should_stop = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._previous = {}

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.restore()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.restore()

"""Lightning strategies with the fixes r1v needs on real hardware.

``DeepSpeedStrategy`` is Lightning's, plus:

- under ZeRO-3, ``torch.arange`` keeps its explicit dtype inside ``zero.Init`` (DeepSpeed otherwise casts it
  to bf16, which corrupts rotary-embedding frequencies built in ``configure_model``; transformers applies the
  same guard in ``from_pretrained``);
- checkpoint folders are written atomically: every rank writes into ``.<name>.tmp-dir`` next to the target,
  then rank 0 seals the folder (:data:`r1v.runtime.runs.SEAL`: its files and sizes) and renames it into place, so a
  kill at any moment leaves the previous checkpoint intact and an unsealed folder is never loaded
  (:func:`r1v.runtime.runs.check_checkpoint`). Removing an old checkpoint first hides it under a temporary name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy as _LightningDeepSpeed

from r1v.runtime.faults import maybe_die
from r1v.runtime.runs import DIR_TMP, forget_verdicts, seal_checkpoint_dir


def _keep_arange_dtype(enabled: bool) -> Any:
    if not enabled:
        return nullcontext()
    try:
        from transformers.integrations.deepspeed import prevent_arange_dtype_change
    except ImportError:  # older transformers: no guard available
        return nullcontext()
    return prevent_arange_dtype_change()


class DeepSpeedStrategy(_LightningDeepSpeed):
    def _auto_select_batch_size(self) -> int:
        """DeepSpeed's ``train_micro_batch_size_per_gpu`` (its throughput log only: Lightning runs the loop).
        Lightning builds the train loader to read it, before ``configure_model`` has built a ZeRO-3 model that
        the loader's collator may need; an r1v stage says its batch size instead."""
        stage = getattr(self.lightning_module, "stage", None)
        if isinstance(stage, dict):
            return int(stage.get("batch_size") or 1)
        return super()._auto_select_batch_size()

    @contextmanager
    def model_sharded_context(self) -> Generator[None, None, None]:
        with _keep_arange_dtype(self.zero_stage_3), super().model_sharded_context():
            yield

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Every rank writes its part into ``.<name>.tmp-dir``; after a barrier rank 0 seals and renames it to
        ``<name>`` (the fault point ``in_checkpoint_write`` fires on every rank between the two)."""
        final = Path(self.broadcast(str(filepath)))
        tmp = final.with_name(f".{final.name}{DIR_TMP}")
        step = int(checkpoint.get("global_step", -1))
        if self.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)  # the leftover of an earlier interrupted save
        self.barrier("r1v_checkpoint_start")
        super().save_checkpoint(checkpoint, str(tmp), storage_options)
        self.barrier("r1v_checkpoint_written")
        maybe_die("in_checkpoint_write", step)
        if self.is_global_zero:
            seal_checkpoint_dir(tmp, final, step)
        self.barrier("r1v_checkpoint_sealed")

    def remove_checkpoint(self, filepath: Any) -> None:
        """Rank 0 renames the folder to a temporary name before deleting it: never a half-deleted checkpoint
        under its real name."""
        path = Path(filepath)
        if not self.is_global_zero or not path.is_dir():
            super().remove_checkpoint(filepath)
            return
        doomed = path.with_name(f".{path.name}.tmp-del")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        forget_verdicts(path)

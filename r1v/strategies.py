"""Lightning strategies with the fixes r1v needs on real hardware.

``DeepSpeedStrategy`` is Lightning's, plus: under ZeRO-3, ``torch.arange`` keeps its explicit dtype
inside ``zero.Init`` (DeepSpeed otherwise casts it to bf16, which corrupts rotary-embedding
frequencies built in ``configure_model``; transformers applies the same guard in ``from_pretrained``).
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager, nullcontext

from lightning.pytorch.strategies import DeepSpeedStrategy as _LightningDeepSpeed


def _keep_arange_dtype(enabled: bool):
    if not enabled:
        return nullcontext()
    try:
        from transformers.integrations.deepspeed import prevent_arange_dtype_change
    except ImportError:  # older transformers: no guard available
        return nullcontext()
    return prevent_arange_dtype_change()


class DeepSpeedStrategy(_LightningDeepSpeed):
    @contextmanager
    def model_sharded_context(self) -> Generator[None, None, None]:
        with _keep_arange_dtype(self.zero_stage_3), super().model_sharded_context():
            yield

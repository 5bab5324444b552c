"""Which generation engine runs a model: ``static`` (static KV cache, CUDA graphs on the GPU) for Llama/Qwen-style
decoders, else transformers' ``generate`` (``hf``)."""

from __future__ import annotations

import logging
from typing import Any

from r1v.core.registry import get_registry
from r1v.generation.decoder import Decoder, UnsupportedModelError

log = logging.getLogger(__name__)


def fastest_engine(model: Any, **knobs: Any) -> tuple[Any, str]:
    """(engine, name): ``static`` when it can run the backbone, else ``hf`` (one log line says why)."""
    try:
        Decoder(model.backbone)
        name = "static"
    except UnsupportedModelError as e:
        log.info("using rollout=hf: %s", e)
        name = "hf"
    entry = get_registry().get("rollout", name)
    return entry.factory(**{k: v for k, v in knobs.items() if k in entry.knobs()}), name

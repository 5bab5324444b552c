"""The one place that picks a generation engine: validation, evaluation, chat, generate and GRPO's rollouts ask
:func:`choose_engine`. ``static`` (static KV cache, CUDA graphs on the GPU) runs Llama/Qwen-style decoders;
transformers' ``generate`` (``hf``) runs anything."""

from __future__ import annotations

import logging
from typing import Any

from r1v.core.registry import get_registry
from r1v.generation.decoder import Decoder, UnsupportedModelError

log = logging.getLogger(__name__)


def choose_engine(model: Any, name: str = "auto", gather: str = "whole", **knobs: Any) -> tuple[Any, str]:
    """(engine, registry name) for ``model``.

    ``name``: a registry name, or ``auto`` — ``static`` where its decoder runs the backbone, else ``hf`` (one log
    line says why). ``gather``: how a ZeRO-3 model reaches the engine (:func:`r1v.runtime.weights.gather_mode`);
    fetched ``layer`` by layer it cannot feed an engine that reads whole weight tensors (``needs_whole_weights``),
    so ``hf`` runs instead, with the same knobs. Knobs an engine does not take are dropped (``auto`` may land on
    either engine).
    """
    registry = get_registry()
    if name == "auto":
        name = "hf" if gather == "layer" else "static"
        if name == "static":
            try:
                Decoder(model.backbone)
            except UnsupportedModelError as e:
                log.info("using rollout=hf: %s", e)
                name = "hf"
    entry = registry.get("rollout", name)
    engine = entry.factory(**{k: v for k, v in knobs.items() if k in entry.knobs()})
    if gather == "layer" and getattr(engine, "needs_whole_weights", False):
        return choose_engine(model, "hf", gather, **knobs)
    return engine, name


def fastest_engine(model: Any, **knobs: Any) -> tuple[Any, str]:
    """(engine, name): ``static`` when it can run the backbone, else ``hf`` (:func:`choose_engine` with ``auto``)."""
    return choose_engine(model, "auto", **knobs)

"""r1v: training R1V-style vision-language reasoning models, as a plugin model zoo.

The Python API (importing ``r1v`` imports neither torch nor any model code; each function does on first use)::

    import r1v

    model = r1v.load("runs/sft")                      # a run folder, a weights file in one, or an InternVL-chat folder
    model.generate("How many shapes?", images=["scene.png"])
    model.chat("And which colour is the circle?", images=["scene.png"])      # completion, answer, closed_think
    r1v.create_model("r1v38b", device="meta")          # a composition, shapes only (no weights, no memory)
    r1v.create_model(vision="tiny", backbone="tiny_reasoner")
    r1v.list_plugins("vision")                         # registered components: kind, name, provider, knobs
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from r1v.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from r1v.model.handle import Model

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "hookimpl", "list_plugins", "load"]


def load(checkpoint: str, *overrides: str, device: str = "auto", merge_lora: bool = True) -> Model:
    """A trained model: ``checkpoint`` is a run folder (its own composition comes with it), a weights file inside
    one, or an InternVL-chat / Skywork-R1V folder; ``overrides`` are ``key=value`` as on the command line;
    ``device`` is ``auto`` (CUDA when present, in bf16), ``cuda`` or ``cpu``. A LoRA run comes with its LoRA merged
    into the weights; ``merge_lora=False`` keeps PEFT's LoRA layers."""
    from r1v.model.handle import load_model

    return load_model(checkpoint, *overrides, device=device, merge_lora=merge_lora)


def create_model(preset: str | None = None, *overrides: str, device: str = "cpu", **parts: str) -> Model:
    """A composition, untrained: ``preset`` is a ``model=`` option (``tiny``, ``r1v_small``, ``r1v38b`` …), ``parts``
    pick ``vision=``/``adapter=``/``backbone=`` by registry name, ``overrides`` are Hydra ``key=value`` strings;
    ``device="meta"`` builds shapes only, as ``python -m r1v inspect`` does."""
    from r1v.model.handle import create_model as create

    return create(preset, *overrides, device=device, **parts)


def list_plugins(kind: str | None = None) -> list[dict[str, Any]]:
    """Every registered component (of ``kind``: vision, adapter, backbone, reward, …), built-in or installed:
    dicts with kind, name, provider, description and knobs (the factory's keyword arguments)."""
    from r1v.model.handle import plugin_table

    return plugin_table(kind)

"""Every r1v hook, in one leaf module (it imports nothing from r1v).

A plugin is any module or object with functions marked ``@r1v.hookimpl``. Each ``register_*`` hook
receives a ``register`` callable::

    register(name: str, factory: Callable[..., Any], description: str = "", **meta) -> None

``factory`` is called later, with the knobs of the chosen Hydra config option as keyword arguments
(``vision=tiny vision.depth=4`` calls the factory of ``tiny`` with ``depth=4``). Factories must be
cheap to *register*: import heavy libraries and load weights inside the factory, never at import.

Hook implementations take exactly the argument names below and declare no defaults (pluggy treats
defaulted hookimpl arguments differently across versions).
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "r1v"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# kind name -> hook name. Later issues add kinds (policy losses, scorers, judges, benchmarks) here
# and as a hookspec below; the registry picks them up from this table.
KIND_HOOKS: dict[str, str] = {
    "vision": "register_vision_encoders",
    "adapter": "register_adapters",
    "backbone": "register_backbones",
    "reward": "register_rewards",
    "length": "register_length_controllers",
    "rollout": "register_rollout_engines",
    "dataset": "register_datasets",
    "stage": "register_stages",
}


@hookspec
def register_vision_encoders(register: Any) -> None:
    """Register vision encoders: factory(**knobs) -> nn.Module with ``forward(pixels (N,3,S,S))
    -> (N, h, w, C)`` grid features and attributes ``image_size``, ``grid_size``, ``hidden_size``."""


@hookspec
def register_adapters(register: Any) -> None:
    """Register adapters: factory(vision_hidden, llm_hidden, **knobs) -> nn.Module mapping
    (N, h, w, C) grid features to (N, T, llm_hidden) tokens; attribute ``downsample_ratio``."""


@hookspec
def register_backbones(register: Any) -> None:
    """Register language backbones: factory(**knobs) -> r1v.interfaces.LanguageBackbone
    (a causal LM with a KV cache plus its tokenizer and chat template)."""


@hookspec
def register_rewards(register: Any) -> None:
    """Register rewards: factory(**knobs) -> callable(r1v.interfaces.RewardInput) -> dict[str, float]
    of named parts; the part named like the reward (or the sum of parts) is its total."""


@hookspec
def register_length_controllers(register: Any) -> None:
    """Register length controllers (DRLC penalties, overlong shaping, budgets)."""


@hookspec
def register_rollout_engines(register: Any) -> None:
    """Register rollout engines: factory(**knobs) -> object with
    ``generate(model, batch, max_new_tokens, temperature, top_p) -> completion ids``."""


@hookspec
def register_datasets(register: Any) -> None:
    """Register datasets: factory(split, **knobs) -> iterable of r1v.interfaces.Sample."""


@hookspec
def register_stages(register: Any) -> None:
    """Register training stages: factory(cfg) -> lightning.LightningModule."""


@hookspec
def register_configs(config_store: Any) -> None:
    """Add Hydra config options, e.g. ``config_store.store(group="vision", name="mine",
    node={"name": "mine", "depth": 2}, package="model.vision")``, so that ``vision=mine`` works,
    ``--help`` lists it and multirun can sweep it."""

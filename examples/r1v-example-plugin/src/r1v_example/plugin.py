"""The plugin module named by the ``r1v`` entry point: one factory and one ``register_*`` call per component.

Registering must stay cheap: the factories below import the components (and torch) only when a run asks for
them (``vision=example_cnn``, ``reward=[accuracy,brevity]``). Their keyword arguments are the knobs, and r1v
makes each component's config option from them (``vision.width=8``, ``rewards.brevity.max_chars=100``): no
``register_configs`` is needed unless a plugin adds options of its own.
"""

from __future__ import annotations

from typing import Any

from r1v import hookimpl


def example_cnn(image_size: int = 64, hidden_size: int = 32, width: int = 16) -> Any:
    """Small random-init CNN encoder (64 px tiles, stride 8: 8×8 grid, 32 wide)."""
    from r1v_example.components import ExampleCNN

    return ExampleCNN(image_size=image_size, hidden_size=hidden_size, width=width)


def brevity(max_chars: int = 200) -> Any:
    """Short completions: 1 up to max_chars characters, linearly lower after."""
    from r1v_example.components import Brevity

    return Brevity(max_chars=max_chars)


@hookimpl
def register_vision_encoders(register):
    register("example_cnn", example_cnn, "example plugin: small random-init CNN (64 px, 8×8 grid, 32 wide)")


@hookimpl
def register_rewards(register):
    # weight: the reward's default weight in the total (rewards.brevity.weight overrides it)
    register("brevity", brevity, "example plugin: 1 up to max_chars characters, then linearly lower", weight=0.1)

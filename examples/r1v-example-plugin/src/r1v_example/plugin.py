"""The plugin module named by the ``r1v`` entry point: factories and hook implementations.

Registering must stay cheap: the factories below import the components (and torch) only when a run
asks for them (``vision=example_cnn``, ``reward=[accuracy,brevity]``). Their keyword arguments are
the knobs that the config options expose (``vision.width=8``, ``rewards.brevity.max_chars=100``).
"""

from __future__ import annotations

from typing import Any

from r1v import hookimpl

CNN_DEFAULTS: dict[str, Any] = {"image_size": 64, "hidden_size": 32, "width": 16}
BREVITY_DEFAULTS: dict[str, Any] = {"max_chars": 200}


def example_cnn(
    image_size: int = CNN_DEFAULTS["image_size"],
    hidden_size: int = CNN_DEFAULTS["hidden_size"],
    width: int = CNN_DEFAULTS["width"],
) -> Any:
    """Small random-init CNN encoder (64 px tiles, stride 8: 8×8 grid, 32 wide)."""
    from r1v_example.components import ExampleCNN

    return ExampleCNN(image_size=image_size, hidden_size=hidden_size, width=width)


def brevity(max_chars: int = BREVITY_DEFAULTS["max_chars"]) -> Any:
    """Short completions: 1 up to max_chars characters, linearly lower after."""
    from r1v_example.components import Brevity

    return Brevity(max_chars=max_chars)


@hookimpl
def register_vision_encoders(register):
    register("example_cnn", example_cnn, "example plugin: small random-init CNN (64 px, 8×8 grid, 32 wide)")


@hookimpl
def register_rewards(register):
    register("brevity", brevity, "example plugin: 1 up to max_chars characters, then linearly lower")


@hookimpl
def register_configs(config_store):
    # Config options, so that `vision=example_cnn` and `reward=[accuracy,brevity]` compose.
    config_store.store(
        group="vision",
        name="example_cnn",
        node={"name": "example_cnn", **CNN_DEFAULTS},
        package="model.vision",
    )
    config_store.store(
        group="reward",
        name="brevity",
        node={"name": "brevity", "weight": 0.1, **BREVITY_DEFAULTS},
        package="rewards.brevity",
    )

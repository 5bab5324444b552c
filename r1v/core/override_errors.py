"""One line that says why Hydra refused an override: a misspelled key (with the keys that exist and "did you
mean"), a group option's settings written where they do not live, a node value with keys the node lacks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from r1v.core.registry import did_you_mean


def node_at(cfg: Mapping[str, Any], dotted: str) -> Mapping[str, Any] | None:
    """The value at ``dotted`` (``a.b.c``) in nested mappings, or None where the path breaks."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def explain_override(err: Exception, overrides: list[str], groups: list[str], config: str = "config") -> str:
    """Why Hydra refused one of ``overrides`` (``err``) of primary config ``config`` (``config``: training,
    ``recipe``: ``python -m r1v.recipe``), in one line; Hydra's own message when none is to blame."""
    from hydra import compose

    msg = str(err)
    for o in overrides:
        key = o.split("=", 1)[0]
        if f"'{key}'" not in msg and f"'{o}'" not in msg:
            continue
        if key.startswith("+"):
            break
        kept = [x for x in overrides if x.split("=", 1)[0] != key]
        try:
            base = compose(config, overrides=kept)
        except Exception:  # another override is bad too: explain this one against the groups chosen
            base = compose(config, overrides=[x for x in kept if "." not in x.split("=", 1)[0]])
        parent, _, leaf = key.rpartition(".")
        node = node_at(base, parent) if parent else base
        if node is None:
            top = key.split(".")[0]
            if top in groups:  # a group whose options live elsewhere (vision -> model.vision)
                homes = [f"{k}.{top}" for k, v in base.items() if isinstance(v, Mapping) and top in v]
                if homes:
                    return (
                        f"override {o}: '{top}' is a config group (choose with {top}=OPTION); its settings "
                        f"live under {homes[0]}: write {homes[0]}{key[len(top) :]}={o.split('=', 1)[1]}"
                    )
            roots = sorted({*base.keys(), *groups})
            return f"override {o}: no config group or key '{top}' (known: {', '.join(roots)}){did_you_mean(top, roots)}"
        keys = sorted(node.keys())
        where = parent or "the top level"
        if leaf in keys:  # the key exists: the value brought keys its node does not have (Hydra's struct mode)
            value = o.split("=", 1)[1]
            return (f"override {o}: the value adds keys that {key} does not have ({key} is "
                    f"{_flow(node[leaf])}); set each one on its own ({key}.KNOB=VALUE, as a plugin's knobs are set) "
                    f"or replace the whole node with ++{key}={value}")  # fmt: skip
        return (f"override {o}: '{leaf}' is not a key of {where} (keys: {', '.join(keys)}){did_you_mean(leaf, keys)}; "
                f"to add a new key write +{o}")  # fmt: skip
    return "config: " + " ".join(msg.split())


def _flow(value: Any) -> str:
    """A config value as one line, the way an override writes it."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return str(value)

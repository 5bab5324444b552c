"""Where each part's starting weights come from, and which weights only the run itself can reproduce.

A part built from a file (``pretrained=<path>``, the shipped ``builtin`` tiny weights, an InternVL-chat folder) can
be rebuilt by anyone who has that file. A part without one (``pretrained=null``, or a factory that has no such knob)
starts from a random draw, which depends on the seed, the device and the library versions: a run saves those
weights (:data:`RANDOM_INIT`) so that evaluation, export and later stages load exactly what it trained with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from r1v.model.assemble import AUDIO_PARTS, PARTS

RANDOM_INIT = "random_init.safetensors"  # in the run folder: the frozen weights no file can rebuild
HASH_LIMIT = 1 << 30  # files above 1 GiB are recorded by size only (hashing tens of GB would stall the start)


def describe_file(path: str | Path) -> dict[str, Any]:
    """``{"path", "bytes", "sha256"}`` of a weights file (or of a folder's ``config.json``), for run.json."""
    p = Path(path)
    target = p / "config.json" if p.is_dir() else p
    out: dict[str, Any] = {"path": str(p)}
    if not target.is_file():
        return {**out, "missing": True}
    out["bytes"] = target.stat().st_size
    if out["bytes"] <= HASH_LIMIT:
        digest = hashlib.sha256()
        with target.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out["sha256" if not p.is_dir() else "config_sha256"] = digest.hexdigest()
    return out


def random_source(node: Mapping[str, Any]) -> bool:
    """Whether a part node builds random weights: ``pretrained`` null, or no ``pretrained`` / ``path`` knob."""
    if "pretrained" in node:
        return not node["pretrained"]
    return not node.get("path")


def part_sources(model_cfg: Mapping[str, Any], seed: int) -> dict[str, dict[str, Any]]:
    """Per part (vision, adapter, backbone): its registry name and where its starting weights come from."""
    if model_cfg.get("internvl"):
        folder = describe_file(model_cfg["internvl"])
        return {p: {"name": "internvl", "source": "internvl folder", **folder} for p in PARTS}
    out = {}
    for part in (*PARTS, *(p for p in AUDIO_PARTS if model_cfg.get(p))):  # audio parts when composed
        node = model_cfg[part]
        entry: dict[str, Any] = {"name": node.get("name")}
        if random_source(node):
            entry.update(source="random init", seed=seed)
        elif node.get("pretrained") == "builtin":
            entry["source"] = "builtin (shipped with r1v)"
        else:
            entry.update(source="file", **describe_file(node.get("pretrained") or node.get("path")))
        out[part] = entry
    return out


def random_frozen(model: Any, model_cfg: Mapping[str, Any], trainable: set[str]) -> list[str]:
    """Names of the parameters that no file rebuilds and the run does not train (so its trained weights do not
    hold them): every frozen parameter of a part with a random source."""
    if model_cfg.get("internvl"):
        return []
    parts = [p for p in (*PARTS, *AUDIO_PARTS) if model_cfg.get(p) and random_source(model_cfg[p])]
    return [n for n, _ in model.named_parameters() if n.split(".")[0] in parts and n not in trainable]

"""The train and validation data sets of a composed config, built by their registered dataset plugin."""

from __future__ import annotations

from typing import Any


def build_datasets(cfg: dict[str, Any], registry: Any) -> tuple[Any, Any]:
    data = cfg["data"]
    knobs = {k: v for k, v in data.items() if k not in ("name", "loader", "max_tokens")}  # max_tokens: the collator's
    if cfg["stage"].get("target") == "reasoning" and data["name"] in ("jsonl", "parquet", "hf_disk", "mixture"):
        knobs["require_reasoning"] = True
    entry = registry.get("dataset", data["name"])
    return entry.factory(split="train", **knobs), entry.factory(split="val", **knobs)

"""``python -m r1v data check``: every bad row of a dataset, before any training.

The checks are the training loader's own (:class:`r1v.data.datasets.JsonlDataset`: JSON, fields and
types, duplicate ids, image files and headers, audio and video files (:mod:`r1v.data.media`: missing, empty,
corrupt, no frames), placeholder counts) plus what needs the model's processor and a full decode: every image, clip
and video decoded as training would (EXIF rotation, transparency, 16-bit; sampled frames), and the
token length of each sample after image-token expansion against the limit (``--max-tokens``, else
``data.max_tokens``, else the backbone's ``max_position_embeddings``; the rule training's collator applies). The
processor comes from the composed model on the meta device, so checking data for a 38B composition needs no
weights and no memory.

Data read by shards (Parquet files, save_to_disk Arrow files) is checked shard by shard over a process pool
(``--workers``), each shard's verdict cached beside it (``<folder>/.r1v_check/``) and keyed by path, size, mtime and
the check settings, so a second run reads only what changed (:mod:`r1v.data.check_shards`). A mixture
(``data=mixture``) is checked source by source.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from r1v.data.check_shards import bad_rows, check_shards, config_hash, sharded
from r1v.data.datasets import error_kind


@dataclass
class Report:
    source: str
    rows: int = 0
    bad: list[str] = field(default_factory=list)  # one line per bad row: "<file>:<line>: <kind>: <why>"
    kinds: Counter[str] = field(default_factory=Counter)
    shards: int = 0  # data read by shards: how many, and how many were checked (the others came from the cache)
    checked: int = 0

    def add(self, line: str) -> None:
        self.bad.append(line)
        self.kinds[error_kind(line)] += 1

    def lines(self) -> list[str]:
        head = f"data check: {self.source}: {self.rows} rows, {len(self.bad)} bad"
        if self.shards:
            head += f" ({self.shards} shards: {self.checked} checked, {self.shards - self.checked} cached)"
        if not self.bad:
            return [head + " (all usable)"]
        out = [head + f" (on_bad_sample=skip trains on {self.rows - len(self.bad)}; =error refuses to start)"]
        out += [f"  {line}" for line in self.bad]
        out.append("by kind: " + ", ".join(f"{k} {n}" for k, n in self.kinds.most_common()))
        return out


def parts(ds: Any, data: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """(label, data set, its config node): a mixture's sources one by one, else the data set itself."""
    sources = getattr(ds, "sources", None)
    if isinstance(sources, list) and hasattr(ds, "names"):
        nodes = data.get("sources") or {}
        return [(f"{name}: ", part, dict(nodes.get(name) or {})) for name, part in zip(ds.names, sources, strict=True)]
    return [("", ds, data)]


def check(cfg: dict[str, Any], max_tokens: int | None = None, workers: int = 1, use_cache: bool = True) -> list[Report]:
    """Check the composed config's train and val datasets row by row; data read by shards (Parquet, save_to_disk)
    shard by shard, ``workers`` processes at a time, each shard's verdict cached (:mod:`r1v.data.check_shards`)."""
    import torch

    from r1v.core.registry import get_registry
    from r1v.data.build import build_datasets
    from r1v.model.build import build

    registry = get_registry()
    data = dict(cfg["data"])
    if "on_bad_sample" in data:
        cfg = {**cfg, "data": {**data, "on_bad_sample": "skip"}}  # collect every bad row, do not stop at the first
    with torch.device("meta"):
        vlm, processor = build(cfg["model"], registry)
    if max_tokens is None:
        max_tokens = data.get("max_tokens")
    if max_tokens is None:
        max_tokens = getattr(getattr(vlm.backbone, "config", None), "max_position_embeddings", None)
    target = cfg["stage"].get("target") if cfg["stage"].get("target") in ("answer", "reasoning") else "answer"
    reports = []
    for split, whole in zip(("train", "val"), build_datasets(cfg, registry), strict=True):
        if whole is None:
            continue
        for label, ds, node in parts(whole, data):
            bad = list(getattr(ds, "bad", []))
            report = Report(f"{label}{getattr(ds, 'path', node.get('name', data['name']))} ({split})",
                            rows=len(ds) + len(bad))  # fmt: skip
            for line in bad:
                report.add(line)
            if sharded(ds):
                config = config_hash(node, ds, cfg["model"], target, max_tokens)
                verdicts, report.checked = check_shards(ds, processor, target, max_tokens, config, workers, use_cache)
                report.shards = len(verdicts)
                lines = [line for _, shard_bad in verdicts for line in shard_bad]
            else:
                lines = bad_rows(ds, range(len(ds)), processor, target, max_tokens)
            for line in lines:
                report.add(line)
            reports.append(report)
    return reports

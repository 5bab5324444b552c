"""``python -m r1v data check``: every bad row of a dataset, before any training.

The checks are the training loader's own (:class:`r1v.data.datasets.JsonlDataset`: JSON, fields and
types, duplicate ids, image files and headers, placeholder counts) plus what needs the model's processor
and a full decode: every image decoded as training would (EXIF rotation, transparency, 16-bit), and the
token length of each sample after image-token expansion against the limit (``--max-tokens``, else
``data.max_tokens``, else the backbone's ``max_position_embeddings``; the rule training's collator applies). The
processor comes from the composed model on the meta device, so checking data for a 38B composition needs no
weights and no memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from r1v.data.datasets import error_kind, too_long


@dataclass
class Report:
    source: str
    rows: int = 0
    bad: list[str] = field(default_factory=list)  # one line per bad row: "<file>:<line>: <kind>: <why>"
    kinds: Counter[str] = field(default_factory=Counter)

    def add(self, line: str) -> None:
        self.bad.append(line)
        self.kinds[error_kind(line)] += 1

    def lines(self) -> list[str]:
        head = f"data check: {self.source}: {self.rows} rows, {len(self.bad)} bad"
        if not self.bad:
            return [head + " (all usable)"]
        out = [head + f" (on_bad_sample=skip trains on {self.rows - len(self.bad)}; =error refuses to start)"]
        out += [f"  {line}" for line in self.bad]
        out.append("by kind: " + ", ".join(f"{k} {n}" for k, n in self.kinds.most_common()))
        return out


def check(cfg: dict[str, Any], max_tokens: int | None = None) -> list[Report]:
    """Check the composed config's train and val datasets (JSONL-backed ones row by row)."""
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
    for split, ds in zip(("train", "val"), build_datasets(cfg, registry), strict=True):
        if ds is None:
            continue
        bad = getattr(ds, "bad", [])
        report = Report(f"{getattr(ds, 'path', cfg['data']['name'])} ({split})", rows=len(ds) + len(bad))
        for line in bad:
            report.add(line)
        rows = getattr(ds, "rows", None)
        for i in range(len(ds)):
            sample = ds[i]
            if rows and "line" in rows[i]:
                where = f"{ds.path}:{rows[i]['line']}"
            else:  # a lazily read data set (Parquet) knows the file:row of what it just read
                where = ds.where(sample.id) if hasattr(ds, "where") else f"{split}[{i}]"
            if sample.meta.get("_error"):
                report.add(sample.meta["_error"])
                continue
            try:
                n = len(processor.encode(sample, target)["input_ids"])
            except (ValueError, OSError) as e:
                report.add(f"{where}: cannot encode: {e}")
                continue
            bad_length = too_long(where, n, max_tokens)
            if bad_length:
                report.add(bad_length)
        reports.append(report)
    return reports

"""A JSONL file in the training schema as a benchmark (``benchmark=jsonl path=…``): images, audios and videos
referenced by path, every question asked as written (the ``plain`` prompt style: the model was trained on these
questions), bad rows skipped as in training, with their count logged."""

from __future__ import annotations

from pathlib import Path

from r1v.data.datasets import JsonlDataset
from r1v.evaluation.scoring import EvalItem


def jsonl_items(path: str | Path) -> list[EvalItem]:
    """Every usable row of ``path`` as an open question; media as absolute paths (decoded when asked)."""
    ds = JsonlDataset(path)
    items = []
    for i, r in enumerate(ds.rows):
        images = ds[i].images  # decoded as in training (a row whose image fails to decode has none: skipped below)
        if len(images) != len(r["images"]):
            continue
        meta, task = {"prompt": "plain", "image_paths": list(r["images"])}, str(r["meta"].get("task", "all"))
        items.append(EvalItem(r["id"], r["question"], r["answer"], "open", [], images, task, meta,
                              list(r.get("audios", [])), list(r.get("videos", []))))  # fmt: skip
    return items

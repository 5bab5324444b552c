"""Writes this folder: a real ``save_to_disk`` DatasetDict (datasets 5.2.0) in the LLaVA layout.

pip install datasets==5.2.0 pillow && python make.py tests/unit/assets/hf_disk_llava
"""

import io
import json
import sys

import datasets
from PIL import Image


def png(i: int) -> bytes:
    im = Image.new("RGB", (8, 8), ((i * 40) % 256, (i * 90) % 256, (i * 150) % 256))
    b = io.BytesIO()
    im.save(b, format="PNG")
    return b.getvalue()


def rows(n: int, off: int) -> dict:
    out = {"id": [], "image": [], "conversations": []}
    for i in range(off, off + n):
        out["id"].append(f"r{i}")
        out["image"].append({"bytes": png(i), "path": None})
        out["conversations"].append(
            [
                {"from": "human", "value": f"<image>\nHow many shapes are there in picture {i}?"},
                {"from": "gpt", "value": f"<think>count</think>{i % 5}"},
            ]
        )
    return out


feats = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
    }
)
train = datasets.Dataset.from_dict(rows(30, 0), features=feats)
train = train.shuffle(seed=0).select(range(24))  # an indices mapping: save_to_disk writes the selected rows out
val = datasets.Dataset.from_dict(rows(6, 100), features=feats)
datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(
    sys.argv[1], num_shards={"train": 2, "validation": 1}
)
with open(sys.argv[1] + "/expected_ids.json", "w") as f:
    json.dump({"train": [r["id"] for r in train], "validation": [r["id"] for r in val]}, f)

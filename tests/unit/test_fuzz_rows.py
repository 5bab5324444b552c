"""A property-based battery (Hypothesis) over the row schema, the image files and the collator: whatever a JSONL
row holds — any JSON value in any field, random bytes as images, any number of ``<image>`` placeholders, long
text — the loader and the collator raise nothing but r1v's one-line DataError, and no batch exceeds the token
budget. Derandomised with a small profile here (CI repeats the same examples); ``benchmarks/fuzz_rows.py`` runs
the long one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from r1v.core.errors import DataError  # noqa: E402
from r1v.data.collate import Collator, Limits, PairCollator  # noqa: E402
from r1v.data.datasets import JsonlDataset, PairsDataset  # noqa: E402

EXAMPLES = int(os.environ.get("R1V_FUZZ_EXAMPLES", "40"))
RANDOM = os.environ.get("R1V_FUZZ_RANDOM") == "1"  # the long profile draws new examples each run
MAX_TOKENS = 256
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
image_names = st.sampled_from(["good.png", "noise.png", "missing.png", "../up.png", "/etc/passwd", "dir"])
images = st.one_of(image_names, st.lists(image_names, max_size=3), json_values)
words = st.lists(st.text(max_size=12), max_size=400)
question = st.one_of(json_values, st.builds(lambda n, w: "<image>\n" * n + " ".join(w), st.integers(0, 3), words))
row = st.fixed_dictionaries(
    {"question": question, "answer": json_values},
    optional={
        "id": json_values,
        "images": images,
        "reasoning": json_values,
        "meta": json_values,
        "chosen": st.one_of(json_values, st.builds(" ".join, words)),
        "rejected": json_values,
    },
)
rows = st.lists(row, min_size=1, max_size=6)
garbage = st.binary(max_size=256)


def _folder(noise: bytes) -> Path:
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "good.png")
    (folder / "noise.png").write_bytes(noise)  # random bytes under an image name
    (folder / "dir").mkdir()
    return folder


@example(
    rows=[{"question": "<image>\n", "answer": 0, "meta": 1, "images": "good.png"}],
    noise=b"",
    policy="skip",
    pairs=False,
)  # found by this battery: a non-object meta crashed the loader with a TypeError
@example(
    rows=[{"question": "q", "answer": 0, "chosen": "a " * 400, "rejected": "b"}], noise=b"", policy="skip", pairs=True
)  # a pair longer than the budget was batched whole (no length limit on preference data)
@settings(max_examples=EXAMPLES, derandomize=not RANDOM, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(rows=rows, noise=garbage, policy=st.sampled_from(["skip", "error"]), pairs=st.booleans())
def test_any_row_is_a_one_line_error_or_a_batch_within_budget(tiny_vlm, rows, noise, policy, pairs):
    _, processor = tiny_vlm
    folder = _folder(noise)
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        ds = (PairsDataset if pairs else JsonlDataset)(path, on_bad_sample=policy)
    except DataError as e:  # under skip only a file without one usable row is refused
        assert "\n" not in str(e) and (policy == "error" or "has no usable samples" in str(e))
        return
    limits = Limits(MAX_TOKENS, policy, ds.where)
    collate = PairCollator(processor, limits) if pairs else Collator(processor, "answer", limits=limits)
    for i in range(len(ds)):
        try:
            batch = collate([ds[i]])
        except DataError as e:
            assert policy == "error" and "\n" not in str(e)
            continue
        if not batch.get("empty"):
            assert batch["input_ids"].shape[1] <= MAX_TOKENS
            assert batch["pixel_values"] is None or batch["pixel_values"].shape[-1] == processor.image_size

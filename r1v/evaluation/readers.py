"""Reading benchmark files as their publishers distribute them: Parquet (Hugging Face dataset repos),
JSONL and CSV, with images embedded (``{"bytes": …, "path": …}`` structs) or referenced by path.

Every problem is one line naming the file and what is wrong: a missing file (and the layout expected),
a missing column (and the columns there are), an image referenced but absent.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from r1v.core.errors import BenchmarkError
from r1v.data.images import to_rgb


def find_files(root: str | Path, patterns: Iterable[str], what: str, layout: str) -> list[Path]:
    """``root`` itself when it is a file, else the files under it matching the first pattern that matches."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.exists():
        raise BenchmarkError(f"benchmark '{what}': {root} does not exist (expected {layout})")
    for pattern in patterns:
        hits = sorted(root.glob(pattern))
        if hits:
            return hits
    raise BenchmarkError(f"benchmark '{what}': no {' or '.join(patterns)} under {root} (expected {layout})")


def read_rows(path: Path, what: str, columns: Iterable[str]) -> list[dict[str, Any]]:
    """Rows of a Parquet, JSONL/JSON or CSV file as dicts; every name in ``columns`` must be there."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - pyarrow is a dependency
            raise BenchmarkError(f"benchmark '{what}': reading {path} needs pyarrow (pip install pyarrow)") from None
        table = pq.read_table(path)
        have, rows = list(table.column_names), table.to_pylist()
    elif suffix in (".jsonl", ".json"):
        text = path.read_text()
        rows = json.loads(text) if suffix == ".json" and text.lstrip().startswith("[") else \
            [json.loads(x) for x in text.splitlines() if x.strip()]  # fmt: skip
        have = sorted({k for r in rows for k in r})
    elif suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows, have = list(reader), list(reader.fieldnames or [])
    else:
        raise BenchmarkError(f"benchmark '{what}': {path} is not Parquet, JSONL or CSV")
    missing = [c for c in columns if c not in have]
    if missing:
        raise BenchmarkError(f"benchmark '{what}': {path} has no column '{missing[0]}' (columns: {', '.join(have)})")
    return rows


def load_image(value: Any, base: Path, what: str, where: str) -> Image.Image:
    """An image given as a Hugging Face image struct (bytes and/or path), raw bytes, or a path relative to
    ``base``; absent → one line naming the row."""
    data, path = None, None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, bytes | bytearray):
        data = value
    elif isinstance(value, str):
        path = value
    if data:
        return to_rgb(Image.open(io.BytesIO(data)))  # EXIF rotation, transparency over white, 16-bit scaled
    if path:
        p = Path(path) if Path(path).is_absolute() else base / path
        if p.is_file():
            with Image.open(p) as im:
                return to_rgb(im)
        raise BenchmarkError(f"benchmark '{what}': {where} references image {p}, which does not exist")
    raise BenchmarkError(f"benchmark '{what}': {where} references an image that is absent (empty image field)")

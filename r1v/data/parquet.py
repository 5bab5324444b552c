"""Parquet shards as a data set, read lazily: R1V-scale training data (millions of rows) without a list of rows.

Start-up reads only the files' footers (schema and rows per row group), so its time and memory grow with the
number of row groups, not rows. ``ds[i]`` finds (file, row group, offset) by bisection over the cumulative row
counts and reads that row group through a small LRU cache (``cache_row_groups`` per process, so per loader
worker); the row is mapped to a :class:`Sample` and validated then. A bad row is therefore found when it is read:
under ``on_bad_sample=skip`` it comes back with ``meta["_error"]`` (the collator skips and counts it, as it does
JSONL's undecodable images) and is counted in ``skipped`` / ``bad``; under ``error`` reading it raises. A sampler
that visits rows in random order still reads a row group per sample; :attr:`ParquetDataset.row_groups` gives the
boundaries a block-shuffle sampler needs to avoid that.

Columns: ``columns`` maps r1v's fields to column names over a preset's defaults:

- ``r1v``: the JSONL names (``id``, ``question``, ``answer``, ``images`` (or ``image``), ``reasoning``, ``meta``,
  ``audios``, ``videos``);
- ``llava``: ``conversations`` = [{from: human|gpt, value}], ``image``, ``audio``, ``video``; question = the human
  turns, answer = the last gpt turn;
- ``sharegpt`` / ``openai``: ``messages`` = [{role: user|assistant|system, content}], ``images``, ``audios``,
  ``videos``; question = the user turns, answer = the last assistant turn.

A preset's ``audios`` / ``videos`` columns are optional (a data set without them reads as before).

Images are file paths (relative to ``image_root``, default the first file's folder; they must resolve inside it
unless ``allow_outside_root``) or encoded bytes: a binary column, or a struct with ``bytes`` (and ``path``) as
Hugging Face ``datasets`` writes its Image feature; one per row or a list. Audio clips and videos (issue 26) come
the same ways (paths under the same root and containment rule, bytes, or the ``{bytes, path}`` struct of ``datasets``'
Audio and Video features), are decoded from memory when bytes (:mod:`r1v.data.media`: no cache files) and checked
by the JSONL reader's rules (empty, corrupt, no frames, more ``<audio>``/``<video>`` than items).

Ids are the ``id`` column's or ``<file stem>-<row>``; duplicate ids are not detected (that needs every row;
``python -m r1v data check`` reads them all). Rows are numbered from 0 within their file (``where`` gives ``file:row``).
"""

from __future__ import annotations

import bisect
import glob
import io
import json
import logging
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from torch.utils.data import Dataset

from r1v.core.errors import DataError
from r1v.core.interfaces import IMAGE_PLACEHOLDER, Sample
from r1v.core.registry import did_you_mean
from r1v.data import media
from r1v.data.datasets import BAD_SAMPLE_POLICIES, error_kind, image_path

log = logging.getLogger(__name__)
Preset = Literal["r1v", "llava", "sharegpt", "openai"]
FIELDS = ("id", "question", "answer", "images", "reasoning", "meta", "messages", "conversations", "audios", "videos")
R1V_NAMES = ("id", "question", "answer", "images", "reasoning", "meta", "audios", "videos")
MEDIA_FIELDS = ("images", "audios", "videos")  # a path, bytes or a {bytes, path} struct, or a list of them
PRESETS: dict[str, dict[str, str]] = {
    "r1v": {name: name for name in R1V_NAMES},
    "llava": {"id": "id", "conversations": "conversations", "images": "image", "audios": "audio", "videos": "video"},
    "sharegpt": {"id": "id", "messages": "messages", "images": "images", "audios": "audios", "videos": "videos"},
    "openai": {"id": "id", "messages": "messages", "images": "images", "audios": "audios", "videos": "videos"},
}
REQUIRED: dict[str, tuple[str, ...]] = {  # fields whose column must exist, per preset
    "r1v": ("question", "answer"), "llava": ("conversations",), "sharegpt": ("messages",), "openai": ("messages",),
}  # fmt: skip
TURN_KEYS = {"conversations": ("from", "value"), "messages": ("role", "content")}
MAX_WHERE = 1 << 16  # ids remembered for where() per process: the recently read rows the collator may name


def _text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _image_type(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return t.get_field_index("bytes") >= 0 or t.get_field_index("path") >= 0
    return _text(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _type_ok(field: str, t: pa.DataType) -> tuple[bool, str]:
    """Whether a column of type ``t`` can hold ``field``, and what it must be otherwise."""
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
    if pa.types.is_null(t) or (is_list and pa.types.is_null(t.value_type)):  # all nulls / empty lists: no type
        return True, ""
    if field in MEDIA_FIELDS:
        return _image_type(t) or (is_list and _image_type(t.value_type)), \
            "a path (string), encoded bytes (binary or a struct with 'bytes'), or a list of them"  # fmt: skip
    if field in TURN_KEYS:
        keys = TURN_KEYS[field]
        ok = is_list and pa.types.is_struct(t.value_type) and all(t.value_type.get_field_index(k) >= 0 for k in keys)
        return ok, f"a list of structs with {' and '.join(keys)}"
    if field == "meta":
        return pa.types.is_struct(t) or pa.types.is_map(t) or _text(t), "a struct or a JSON string"
    if field in ("answer", "id"):
        return _text(t) or pa.types.is_integer(t) or pa.types.is_floating(t), "a string or a number"
    return _text(t), "a string"


def expand(train: str) -> list[Path]:
    """The Parquet files of ``data.train``: a glob, a file, or a folder (its ``*.parquet``), sorted."""
    if any(c in train for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(train, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"data.train: the glob '{train}' matches no files")
        return files
    path = Path(train)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise DataError(f"data.train: folder {path} has no *.parquet files")
        return files
    if not path.is_file():
        raise DataError(f"data.train: {path} does not exist (a Parquet file, a folder of them, or a glob)")
    return [path]


class RowGroupDataset(Dataset, ABC):
    """Rows of columnar files located at start by their row groups' counts and read a row group at a time when
    sampled. A format supplies :meth:`_expand` (its files), :meth:`_layout` (a file's schema and rows per group,
    without decoding columns) and :meth:`_read` (one group's rows); Parquet here, Arrow IPC streams in
    :mod:`r1v.data.hf_disk`."""

    def __init__(self, train: str | Path, columns: dict[str, str | None] | None = None, preset: str = "r1v",
                 image_root: str | Path | None = None, on_bad_sample: str = "skip", require_reasoning: bool = False,
                 allow_outside_root: bool = False, cache_row_groups: int = 4,
                 video_frames: int = 4) -> None:  # fmt: skip
        self.video_frames = video_frames  # frames sampled per video (data.video.frames)
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise DataError(f"data.on_bad_sample: '{on_bad_sample}' is not allowed (use skip or error)")
        if preset not in PRESETS:
            raise DataError(f"data.preset: '{preset}' is not allowed (use {', '.join(PRESETS)})"
                            f"{did_you_mean(preset, list(PRESETS))}")  # fmt: skip
        if cache_row_groups < 1:
            raise DataError(f"data.cache_row_groups: {cache_row_groups} is not allowed (use 1 or more)")
        unknown = [k for k in columns or {} if k not in FIELDS]
        if unknown:
            raise DataError(f"data.columns: unknown field '{unknown[0]}' (fields: {', '.join(FIELDS)})"
                            f"{did_you_mean(unknown[0], FIELDS)}")  # fmt: skip
        self.files = self._expand(str(train))
        self.path = self.files[0] if len(self.files) == 1 else Path(str(train))  # how reports name the data set
        self.preset, self.on_bad_sample, self.require_reasoning = preset, on_bad_sample, require_reasoning
        self.root = Path(image_root) if image_root else self.files[0].parent
        self._real_root, self.allow_outside_root = self.root.resolve(), allow_outside_root
        # the training sampler's block-shuffle window: as many row groups as the cache holds, so a window's
        # random order reads each of its groups once (r1v.data.sampler.BlockShuffleSampler)
        self.cache_row_groups = self.shuffle_window = cache_row_groups
        self.skipped: Counter[str] = Counter()
        self.bad: list[str] = []
        explicit = {k: v for k, v in (columns or {}).items() if v is not None}  # None: the preset's column
        self.columns, self.row_groups, self._files_of_group = self._scan(explicit)
        self._group_start_rows = self._rows_before(self._files_of_group, self.row_groups)
        self._cache: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()
        self._where: OrderedDict[str, str] = OrderedDict()
        if not len(self):
            raise DataError(f"data.train: {train} has no rows")

    @abstractmethod
    def _expand(self, train: str) -> list[Path]:
        """The format's files for ``data.train`` (one-line DataError when there are none)."""

    @abstractmethod
    def _layout(self, fi: int) -> tuple[pa.Schema, list[int]]:
        """File ``fi``'s schema and the row count of each of its row groups, read without decoding columns."""

    @abstractmethod
    def _read(self, fi: int, group: int, columns: list[str]) -> list[dict[str, Any]]:
        """The rows of row group ``group`` of file ``fi``, only ``columns``."""

    def _scan(self, explicit: dict[str, str]) -> tuple[dict[str, str], list[int], list[tuple[int, int]]]:
        """Layouts only: the field -> column mapping checked against every file's schema, the cumulative row
        count at each row group's end, and each row group's (file index, row group in file)."""
        mapping = {**PRESETS[self.preset], **explicit}
        if self.preset == "r1v" and "images" not in explicit:  # JSONL takes one "image" as well as "images"
            mapping["images"] = "images"
        bounds, groups, total, chosen = [], [], 0, None
        for fi, f in enumerate(self.files):
            schema, counts = self._layout(fi)
            names = schema.names
            if self.preset == "r1v" and "images" not in explicit and "images" not in names and "image" in names:
                mapping["images"] = "image"
            resolved = {}
            for field, col in mapping.items():
                if col in names:
                    ok, want = _type_ok(field, schema.field(col).type)
                    if not ok:
                        kind = schema.field(col).type
                        raise DataError(f"{f}: column '{col}' (data.columns.{field}) has type {kind}; {field} must be "
                                        f"{want}; columns: {', '.join(names)}")  # fmt: skip
                    resolved[field] = col
                elif field in explicit or field in REQUIRED[self.preset]:
                    raise DataError(f"{f}: no column '{col}' (data.columns.{field}; preset {self.preset}); columns: "
                                    f"{', '.join(names)}{did_you_mean(col, names)}")  # fmt: skip
            if chosen is not None and resolved != chosen:
                raise DataError(f"{f}: its columns differ from {self.files[0]}'s: mapped {resolved} vs {chosen}")
            chosen = resolved
            for g, n in enumerate(counts):
                if n:
                    total += n
                    bounds.append(total)
                    groups.append((fi, g))
        return chosen or {}, bounds, groups

    @staticmethod
    def _rows_before(groups: list[tuple[int, int]], bounds: list[int]) -> list[int]:
        """Per row group: its first row's number within its own file (``where`` names rows by file)."""
        starts, prev_file, in_file, prev_end = [], -1, 0, 0
        for (fi, _), end in zip(groups, bounds, strict=True):
            if fi != prev_file:
                prev_file, in_file = fi, 0
            starts.append(in_file)
            in_file += end - prev_end
            prev_end = end
        return starts

    def __len__(self) -> int:
        return self.row_groups[-1] if self.row_groups else 0

    def rows_of_file(self, fi: int) -> range:
        """The data set indices of file ``fi``'s rows (its row groups are consecutive; empty for an empty file)."""
        groups = [g for g, (f, _) in enumerate(self._files_of_group) if f == fi]
        if not groups:
            return range(0)
        return range(self.row_groups[groups[0] - 1] if groups[0] else 0, self.row_groups[groups[-1]])

    def locate(self, i: int) -> tuple[int, int]:
        """(row group index, offset in it) of row ``i``, by bisection over the cumulative counts."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range (0..{len(self) - 1})")
        g = bisect.bisect_right(self.row_groups, i)
        return g, i - (self.row_groups[g - 1] if g else 0)

    def _group(self, g: int) -> list[dict[str, Any]]:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        fi, rg = self._files_of_group[g]
        cols = sorted(set(self.columns.values()))
        rows = self._read(fi, rg, cols)
        self._cache[g] = rows
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return rows

    def __getstate__(self) -> dict[str, Any]:  # a loader worker starts with an empty cache of its own
        return {**self.__dict__, "_cache": OrderedDict(), "_where": OrderedDict()}

    def where(self, sample_id: str) -> str:
        """``file:row`` of a sample read by this process (how the training collator names a row it refuses)."""
        return self._where.get(sample_id, f"{self.path} (id {sample_id})")

    def __getitem__(self, i: int) -> Sample:
        g, off = self.locate(int(i))
        fi = self._files_of_group[g][0]
        row_no = self._group_start_rows[g] + off
        where = f"{self.files[fi]}:{row_no}"
        row = self._group(g)[off]
        raw_id = row.get(self.columns["id"]) if "id" in self.columns else None
        sample_id = str(raw_id) if raw_id is not None else f"{self.files[fi].stem}-{row_no}"
        self._where[sample_id] = where
        self._where.move_to_end(sample_id)
        while len(self._where) > MAX_WHERE:
            self._where.popitem(last=False)
        try:
            return self._sample(row, sample_id, where)
        except DataError as e:
            kind = error_kind(str(e))
            self.skipped[kind] += 1
            self.bad.append(str(e))
            if self.on_bad_sample == "error":
                raise DataError(f"{e}; data.on_bad_sample=error stops here (skip drops the row)") from None
            return Sample(sample_id, "", "", [], None, {"_error": str(e)}, [])

    def _sample(self, row: dict[str, Any], sample_id: str, where: str) -> Sample:
        c = self.columns
        if "conversations" in c or "messages" in c:
            question, answer = self._turns(row, where)
        else:
            question, answer = row.get(c["question"]), row.get(c["answer"])
        for field, value in (("question", question), ("answer", answer)):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(f"{where}: missing field '{field}': the row's {self._source(field)} is empty")
        reasoning = row.get(c["reasoning"]) if "reasoning" in c else None
        if self.require_reasoning and not reasoning:
            raise DataError(f"{where}: missing field 'reasoning': stage.target=reasoning needs a worked chain")
        meta = row.get(c["meta"]) if "meta" in c else None
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON: column '{c['meta']}' (meta): {e.msg}") from None
        if isinstance(meta, list):  # a Parquet map column reads as [(key, value), ...]
            meta = dict(meta)
        if meta is not None and not isinstance(meta, dict):
            raise DataError(f"{where}: wrong type: 'meta' is a {type(meta).__name__}; it must be an object")
        images, paths = self._images(row.get(c["images"]) if "images" in c else None, where)
        n_ph = str(question).count(IMAGE_PLACEHOLDER)
        if n_ph > len(images):
            raise DataError(f"{where}: placeholder count: {n_ph} {IMAGE_PLACEHOLDER} in the question "
                            f"but {len(images)} images")  # fmt: skip
        sample = Sample(sample_id, str(question), str(answer), images, reasoning, dict(meta or {}), paths)
        for kind, items, item_paths in ((media.AUDIOS, sample.audios, sample.audio_paths),
                                        (media.VIDEOS, sample.videos, sample.video_paths)):  # fmt: skip
            value = row.get(c[kind.field]) if kind.field in c else None
            for k, item in enumerate(media.as_list(value, kind, where, allow_bytes=True)):
                data, path = (item.get("bytes"), item.get("path")) if isinstance(item, dict) else (item, None)
                if isinstance(data, str):
                    data, path = None, data
                if data is None and path is None:
                    continue
                source = bytes(data) if data is not None else self._path(path, where, kind.what)
                items.append(media.load(kind, source, where, k, self.video_frames))
                if data is None:
                    item_paths.append(str(source))
            media.check_placeholders(kind, question, len(items), where)
        return sample

    def _source(self, field: str) -> str:
        if "conversations" in self.columns:
            turn = "human turns" if field == "question" else "last gpt turn"
            return f"column '{self.columns['conversations']}' ({turn})"
        if "messages" in self.columns:
            turn = "user turns" if field == "question" else "last assistant turn"
            return f"column '{self.columns['messages']}' ({turn})"
        return f"column '{self.columns[field]}'"

    def _turns(self, row: dict[str, Any], where: str) -> tuple[str | None, str | None]:
        field = "conversations" if "conversations" in self.columns else "messages"
        who, what = TURN_KEYS[field]
        asks, answers = ("human", "user"), ("gpt", "assistant")
        questions, answer = [], None
        for turn in row.get(self.columns[field]) or []:
            content = turn.get(what)
            if isinstance(content, list):  # OpenAI content parts: the text ones make the turn's text
                content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
            if turn.get(who) in asks:
                questions.append(content or "")
            elif turn.get(who) in answers:
                answer = content
        return ("\n".join(questions) if questions else None), answer

    def _images(self, value: Any, where: str) -> tuple[list[Image.Image], list[str]]:
        from r1v.data.images import to_rgb

        items = [] if value is None else value if isinstance(value, list) else [value]
        images, paths = [], []
        for k, item in enumerate(items):
            data, path = item, None
            if isinstance(item, dict):  # Hugging Face's Image feature: bytes, else a path
                data, path = item.get("bytes"), item.get("path")
                if data is None and path is None:
                    continue
            if isinstance(data, str):
                data, path = None, data
            if data is None:
                p = self._path(path, where)
                paths.append(str(p))
                opener, name = (lambda p=p: Image.open(p)), str(p)
            else:
                opener, name = (lambda d=data: Image.open(io.BytesIO(d))), f"image {k} ({len(data)} bytes)"
            try:
                with opener() as im:
                    images.append(to_rgb(im))
            except Exception as e:
                raise DataError(f"{where}: corrupt image: {name} cannot be decoded ({type(e).__name__})") from None
        return images, paths

    def _path(self, rel: str, where: str, what: str = "image") -> Path:
        """An image (audio, video) path checked as JSONL's are (:func:`r1v.data.datasets.image_path`)."""
        return image_path(rel, self.root, self._real_root, self.allow_outside_root, where, what).resolve()


class ParquetDataset(RowGroupDataset):
    """Rows of Parquet files, located by footer at start and read a row group at a time when sampled."""

    def _expand(self, train: str) -> list[Path]:
        return expand(train)

    def _layout(self, fi: int) -> tuple[pa.Schema, list[int]]:
        f = self.files[fi]
        try:
            meta = pq.ParquetFile(f).metadata
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{f}: not a Parquet file ({e})") from None
        return meta.schema.to_arrow_schema(), [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]

    def _read(self, fi: int, group: int, columns: list[str]) -> list[dict[str, Any]]:
        return pq.ParquetFile(self.files[fi]).read_row_group(group, columns=columns).to_pylist()

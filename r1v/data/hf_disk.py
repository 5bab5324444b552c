"""A Hugging Face ``datasets`` folder written by ``save_to_disk``, read lazily with pyarrow (no ``datasets`` needed).

Layout: a ``Dataset`` folder holds ``state.json`` (its ``_data_files`` list names the shards), ``dataset_info.json``
and the shards, Arrow IPC *stream* files (``data-00000-of-00002.arrow``); a ``DatasetDict`` folder holds
``dataset_dict.json`` (``{"splits": [...]}``) and one ``Dataset`` folder per split. ``data.train`` may name either:
a ``DatasetDict`` gives its ``data.train_split`` (default ``train``). ``data.val`` is a folder (a ``Dataset``, or a
``DatasetDict`` whose ``validation`` or else ``test`` split is taken), a split name of the ``data.train``
``DatasetDict``, or null: then that ``DatasetDict``'s ``validation`` or else ``test`` split, none if it has neither
(or ``data.train`` is a plain ``Dataset``).

A stream file's record batches are its row groups: start-up walks the memory-mapped file's messages and reads each
record batch's row count from its flatbuffer header (the body is not touched, so nothing is decoded), remembering
where each message starts; ``ds[i]`` then decodes one batch from there. Everything else (presets, ``data.columns``,
images, audio clips and videos as paths under ``data.image_root`` — default the folder given — or the
``{bytes, path}`` struct of ``datasets``' Image / Audio / Video features, the LRU of
batches, ``row_groups`` for the block shuffle, ``where`` = ``file:row``) is :class:`r1v.data.parquet.RowGroupDataset`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from r1v.core.errors import DataError
from r1v.core.registry import did_you_mean
from r1v.data.parquet import RowGroupDataset

log = logging.getLogger(__name__)
VAL_SPLITS = ("validation", "test")  # what a DatasetDict offers for validation when data.val is null, in order


def _splits(folder: Path) -> list[str]:
    path = folder / "dataset_dict.json"
    try:
        splits = json.loads(path.read_text()).get("splits")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: not a datasets dataset_dict.json ({e})") from None
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise DataError(f"{path}: 'splits' must be a list of split names, got {splits!r}")
    return splits


def is_dataset_dict(path: str | Path) -> bool:
    return (Path(path) / "dataset_dict.json").is_file() and not (Path(path) / "state.json").is_file()


def dataset_folder(path: str | Path, split: str | None, option: str, split_option: str) -> Path:
    """The ``Dataset`` folder of ``path``: itself (it has ``state.json``) or, for a ``DatasetDict``, its ``split``
    subfolder (``None``: ``validation`` or else ``test``)."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{option}: {p} is not a folder (one written by datasets' save_to_disk)")
    if (p / "state.json").is_file():
        return p
    if not (p / "dataset_dict.json").is_file():
        raise DataError(f"{option}: {p} is not a datasets save_to_disk folder: expected state.json (a Dataset) or "
                        "dataset_dict.json (a DatasetDict) in it")  # fmt: skip
    splits = _splits(p)
    if split is None:
        split = next((s for s in VAL_SPLITS if s in splits), None)
        if split is None:
            raise DataError(f"{option}: {p} has no {' or '.join(VAL_SPLITS)} split (splits: {', '.join(splits)}); "
                            "name one with data.val=<split>")  # fmt: skip
    if split not in splits:
        raise DataError(f"{split_option}: {p} has no split '{split}' (splits: {', '.join(splits)})"
                        f"{did_you_mean(split, splits)}")  # fmt: skip
    if not (p / split / "state.json").is_file():
        raise DataError(f"{p / 'dataset_dict.json'}: lists split '{split}' but {p / split} has no state.json")
    return p / split


def val_folder(train: str, val: str | None, train_split: str = "train") -> Path | None:
    """The validation ``Dataset`` folder (see the module's doc), or ``None`` when there is none."""
    if val is None:
        if not is_dataset_dict(train):
            return None
        present = [s for s in VAL_SPLITS if s in _splits(Path(train)) and s != train_split]
        if not present:
            return None
        log.info("data.val: the %s split of %s", present[0], train)
        return dataset_folder(train, present[0], "data.train", "data.val")
    if Path(val).exists():
        return dataset_folder(val, None, "data.val", "data.val")
    if is_dataset_dict(train):
        splits = _splits(Path(train))
        if val not in splits:
            raise DataError(f"data.val: '{val}' is neither a folder nor a split of {train} (splits: "
                            f"{', '.join(splits)}){did_you_mean(val, splits)}")  # fmt: skip
        return dataset_folder(train, val, "data.train", "data.val")
    raise DataError(f"data.val: {val} does not exist (a save_to_disk folder, or a split name when data.train is a "
                    "DatasetDict)")  # fmt: skip


class HfDiskDataset(RowGroupDataset):
    """A ``save_to_disk`` folder's rows, located by record batch headers at start and read a batch at a time."""

    def __init__(self, path: str | Path, columns: dict[str, str | None] | None = None, preset: str = "r1v",
                 image_root: str | Path | None = None, on_bad_sample: str = "skip", require_reasoning: bool = False,
                 allow_outside_root: bool = False, cache_row_groups: int = 4, split: str = "train",
                 video_frames: int = 4) -> None:  # fmt: skip
        self.split = split
        self._schemas: list[pa.Schema] = []
        self._offsets: list[list[int]] = []  # per file: where each record batch message starts
        super().__init__(path, columns, preset, image_root or path, on_bad_sample, require_reasoning,
                         allow_outside_root, cache_row_groups, video_frames)  # fmt: skip
        self.path = self.folder

    def _expand(self, train: str) -> list[Path]:
        self.folder = dataset_folder(train, self.split, "data.train", "data.train_split")
        state = self.folder / "state.json"
        try:
            names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{state}: no _data_files list of {{filename}} naming the shards ({type(e).__name__}: "
                            f"{e})") from None  # fmt: skip
        files = [self.folder / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{state}: names {missing[0]}, which does not exist")
        if not files:
            raise DataError(f"{state}: _data_files is empty")
        return files

    def _layout(self, fi: int) -> tuple[pa.Schema, list[int]]:
        f = self.files[fi]
        schema, offsets, counts = None, [], []
        try:
            with pa.memory_map(str(f)) as mm:
                mm.seek(8 if mm.read(6) == b"ARROW1" else 0)  # the IPC file format: a stream after the magic
                reader = pa.ipc.MessageReader.open_stream(mm)
                while True:
                    at = mm.tell()
                    try:
                        msg = reader.read_next_message()  # on a memory map the body is a slice: not read, not decoded
                    except StopIteration:
                        break
                    if msg.type == "schema":
                        schema = pa.ipc.read_schema(msg)
                    elif msg.type == "record batch" and schema is not None:
                        offsets.append(at)
                        # zero-copy over the memory map: array views of the body, no column data read or converted
                        counts.append(pa.ipc.read_record_batch(msg, schema).num_rows)
                    else:  # datasets writes none: a dictionary batch would tie each batch to the ones before it
                        raise DataError(f"{f}: a {msg.type} message; only plain (not dictionary-encoded) columns are "
                                        "supported")  # fmt: skip
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{f}: not an Arrow IPC stream ({e})") from None
        if schema is None:
            raise DataError(f"{f}: not an Arrow IPC stream (no schema message)")
        self._schemas.append(schema)
        self._offsets.append(offsets)
        return schema, counts

    def _read(self, fi: int, group: int, columns: list[str]) -> list[dict[str, Any]]:
        with pa.memory_map(str(self.files[fi])) as mm:
            mm.seek(self._offsets[fi][group])
            batch = pa.ipc.read_record_batch(pa.ipc.read_message(mm), self._schemas[fi])
            return batch.select(columns).to_pylist()  # Python objects before the map closes

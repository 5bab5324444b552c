"""``data check`` on data read by shards (Parquet files, save_to_disk Arrow files): one verdict per shard, computed
in parallel by a process pool (over pieces of :data:`CHUNK_ROWS` rows, so one big shard is parallel too) and cached
per shard.

A verdict is the shard's row count and its bad rows' lines, exactly as the sequential check writes them
(``<file>:<row>: <kind>: <why>``), so a report reads the same with or without the cache. It is cached in a file per
shard, keyed by the shard's resolved path, size and modification time and by a hash of what decides a verdict
(:func:`config_hash`: the data knobs that map and check rows, the image root, the model composition that sets token
lengths, the stage target, the token limit, r1v's version). A second run re-reads only shards whose key changed.

Where the cache lives: ``<shard's folder>/.r1v_check/<shard name>.json``, beside the data, when that folder is
writable: a data set checked once is checked for everyone who reads the same shards with the same settings, the
cache goes when the data goes, and copying the folder keeps it (the key is re-checked, so a stale copy costs a
re-check, never a wrong verdict). A read-only data folder (a mounted bucket, a shared read-only disk) falls back to
the user cache, ``$XDG_CACHE_HOME/r1v/check/`` (default ``~/.cache``), one file per shard named by a hash of its
path. Image, audio and video files a row names by path are not part of the key (a row's media bytes inside the shard
are): replace such a file in place and the shard's verdict is stale; ``--no-cache`` re-checks everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from r1v.data.datasets import too_long

CACHE_DIR = ".r1v_check"
NOT_KEY = ("train", "val", "train_split", "loader", "on_bad_sample", "cache_row_groups", "name")  # no verdict changes
CHUNK_ROWS = 10_000  # rows per unit of work of the pool
_WORKER: dict[str, Any] = {}  # a pool worker's data set, processor and limits (set once by _setup)


def sharded(ds: Any) -> bool:
    """Whether ``ds`` is read by shards whose rows :meth:`rows_of_file` gives (Parquet, save_to_disk)."""
    return callable(getattr(ds, "rows_of_file", None)) and bool(getattr(ds, "files", None))


def bad_rows(ds: Any, indices: Iterable[int], processor: Any, target: str, max_tokens: int | None) -> list[str]:
    """The bad-row lines of ``ds``'s rows ``indices``: unreadable (the data set's own checks, on read), not encodable,
    or too long after image-token expansion (the training collator's rule)."""
    rows = getattr(ds, "rows", None)
    bad = []
    for i in indices:
        sample = ds[i]
        if rows and "line" in rows[i]:
            where = f"{ds.path}:{rows[i]['line']}"
        else:  # a lazily read data set (Parquet) knows the file:row of what it just read
            where = ds.where(sample.id) if hasattr(ds, "where") else f"[{i}]"
        if sample.meta.get("_error"):
            bad.append(sample.meta["_error"])
            continue
        try:
            n = len(processor.encode(sample, target)["input_ids"])
        except (ValueError, OSError) as e:
            bad.append(f"{where}: cannot encode: {e}")
            continue
        line = too_long(where, n, max_tokens)
        if line:
            bad.append(line)
    return bad


def config_hash(data: Mapping[str, Any], ds: Any, model: Mapping[str, Any], target: str, limit: int | None) -> str:
    """What decides a shard's verdict besides the shard itself, hashed (see the module docstring)."""
    import r1v

    what = {"data": {k: v for k, v in data.items() if k not in NOT_KEY}, "root": str(getattr(ds, "root", "")),
            "allow_outside_root": getattr(ds, "allow_outside_root", None), "columns": getattr(ds, "columns", None),
            "model": model, "target": target, "max_tokens": limit, "version": r1v.__version__}  # fmt: skip
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_file(shard: Path) -> Path:
    """Where ``shard``'s verdict is cached: beside it when its folder is writable, else the user cache."""
    folder = shard.parent
    if os.access(folder, os.W_OK | os.X_OK) and (not (folder / CACHE_DIR).exists() or
                                                 os.access(folder / CACHE_DIR, os.W_OK | os.X_OK)):  # fmt: skip
        return folder / CACHE_DIR / f"{shard.name}.json"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "r1v" / "check"
    return base / f"{hashlib.sha1(str(shard.resolve()).encode()).hexdigest()[:16]}-{shard.name}.json"


def shard_key(shard: Path, config: str) -> dict[str, Any]:
    st = shard.stat()
    return {"path": str(shard.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "config": config}


def cached(shard: Path, key: Mapping[str, Any]) -> tuple[int, list[str]] | None:
    """The cached (rows, bad lines) of ``shard`` when its key matches, else None (also for an unreadable cache)."""
    try:
        entry = json.loads(cache_file(shard).read_text())
    except (OSError, ValueError):
        return None
    if entry.get("key") != dict(key):
        return None
    return int(entry["rows"]), list(entry["bad"])


def store(shard: Path, key: Mapping[str, Any], rows: int, bad: list[str]) -> None:
    """Cache a verdict (atomically: a check killed mid-write leaves the old file or none). Best effort: a cache that
    cannot be written costs a re-check next time, never the check itself."""
    path = cache_file(shard)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": dict(key), "rows": rows, "bad": bad}))
        tmp.replace(path)
    except OSError:
        pass


def _setup(ds: Any, processor: Any, target: str, max_tokens: int | None) -> None:
    _WORKER.update(ds=ds, processor=processor, target=target, max_tokens=max_tokens)


def _check_rows(start: int, stop: int) -> list[str]:
    return bad_rows(_WORKER["ds"], range(start, stop), _WORKER["processor"], _WORKER["target"], _WORKER["max_tokens"])


def chunks(rows: range, size: int | None = None) -> list[tuple[int, int]]:
    """A shard's rows cut into (start, stop) pieces of ``size``: the pool's units of work, so that one big shard
    is checked by every worker too (a piece of whole row groups reads each of them once)."""
    size = size or CHUNK_ROWS
    return [(a, min(a + size, rows.stop)) for a in range(rows.start, rows.stop, size)]


def check_shards(ds: Any, processor: Any, target: str, max_tokens: int | None, config: str, workers: int = 1,
                 use_cache: bool = True) -> tuple[list[tuple[int, list[str]]], int]:  # fmt: skip
    """Every shard's (rows, bad lines), in file order, and how many shards were checked (not read from the cache).
    The rows of the shards to check go in pieces (:func:`chunks`) to ``workers`` spawned processes (each gets the
    data set and processor once), or are checked in this process with one worker or one piece."""
    keys = [shard_key(f, config) for f in ds.files]
    verdicts: list[tuple[int, list[str]] | None] = [cached(f, k) if use_cache else None
                                                    for f, k in zip(ds.files, keys, strict=True)]  # fmt: skip
    todo = {fi: chunks(ds.rows_of_file(fi)) for fi, v in enumerate(verdicts) if v is None}
    pieces = sum(len(c) for c in todo.values())
    pool = None
    if pieces > 1 and workers > 1:
        from r1v.runtime.workers import WorkerPool

        pool = WorkerPool(min(workers, pieces), setup=_setup, setup_args=(ds, processor, target, max_tokens))
    else:
        _setup(ds, processor, target, max_tokens)
    try:
        if pool is not None:
            futures = {fi: [pool.submit(_check_rows, *c) for c in cs] for fi, cs in todo.items()}
            results = ((fi, (f.result() for f in fs)) for fi, fs in futures.items())
        else:
            results = ((fi, (_check_rows(*c) for c in cs)) for fi, cs in todo.items())
        for fi, parts in results:  # shard by shard, in order; each cached when done (a killed check keeps them)
            verdicts[fi] = (len(ds.rows_of_file(fi)), [line for part in parts for line in part])
            store(ds.files[fi], keys[fi], *verdicts[fi])
    finally:
        if pool is not None:
            pool.close()
        _WORKER.clear()
    return [v for v in verdicts if v is not None], len(todo)

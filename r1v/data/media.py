"""A row's audio clips and videos (issue 26), one set of rules for every reader: JSONL (:mod:`r1v.data.datasets`),
Parquet and save_to_disk folders (:mod:`r1v.data.parquet`), and so for ``python -m r1v data check``.

An item is a file (a path the reader has already resolved and contained, as it does images) or encoded bytes (a
binary column, or the ``{bytes, path}`` struct Hugging Face ``datasets`` writes for its Audio and Video features).
Bytes are read from memory (soundfile and PyAV both take a file object), never written to a cache: nothing to clean
up, nothing to go stale, and a sample's bytes already travel with its row. Every bad item is one line,
``<where>: <kind>: <why>``, with the kinds ``missing``/``empty``/``corrupt <audio|video>`` and ``placeholder count``
that the JSONL reader has always used.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from r1v.core.errors import DataError
from r1v.core.interfaces import AUDIO_PLACEHOLDER, VIDEO_PLACEHOLDER, AudioClip
from r1v.data import audio, video

Source = Path | bytes  # a contained, existing file, or encoded bytes


@dataclass(frozen=True)
class MediaKind:
    """One kind of media a row may carry: its field, how messages name it, its placeholder and its library."""

    field: str  # the JSONL / column-mapping field: "audios" or "videos"
    what: str  # "audio" / "video": the kinds' second word ("corrupt audio")
    plural: str  # in the placeholder-count message
    placeholder: str
    library: str  # what a missing import names
    frames_word: str  # "frames" / "video frames": what an empty one has none of


AUDIOS = MediaKind("audios", "audio", "audio clips", AUDIO_PLACEHOLDER, "soundfile", "frames")
VIDEOS = MediaKind("videos", "video", "videos", VIDEO_PLACEHOLDER, "PyAV", "video frames")
KINDS: tuple[MediaKind, ...] = (AUDIOS, VIDEOS)


def as_list(value: Any, kind: MediaKind, where: str, allow_bytes: bool = False) -> list[Any]:
    """``row[kind.field]`` as a list (one item may come bare; None is none). JSONL rows hold paths only; columnar rows
    (``allow_bytes``) may hold bytes or ``{bytes, path}`` structs too. A wrong type is a one-line DataError."""
    items = [] if value is None else value if isinstance(value, list) else [value]
    if allow_bytes:  # a null entry of a list column is no item
        items = [x for x in items if x is not None]
    ok = (str, bytes, dict) if allow_bytes else (str,)
    if not all(isinstance(x, ok) for x in items):
        want = "a file path, encoded bytes, a {bytes, path} struct" if allow_bytes else "a file path"
        raise DataError(f"{where}: wrong type: '{kind.field}' must be {want} or a list of them")
    return items


def _open(source: Source) -> str | BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes | bytearray) else str(source)


def _name(source: Source, k: int, kind: MediaKind) -> str:
    return str(source) if isinstance(source, Path) else f"{kind.what} {k} ({len(source)} bytes)"


def _size(source: Source) -> int:
    return len(source) if isinstance(source, bytes | bytearray) else source.stat().st_size


def frames(kind: MediaKind, source: Source) -> int:
    """Frames of an item: an audio file's from its header (soundfile), a video's by decoding it (PyAV)."""
    return audio.probe(_open(source)) if kind is AUDIOS else video.count_frames(_open(source))


def check(kind: MediaKind, source: Source, where: str, k: int = 0) -> None:
    """A one-line DataError unless ``source`` (item ``k`` of the row) is a non-empty file the library reads with at
    least one frame; what the JSONL reader checks of every row when it is built (and so ``data check``)."""
    name = _name(source, k, kind)
    if _size(source) == 0:
        raise DataError(f"{where}: empty {kind.what}: {name} is an empty file")
    try:
        n = frames(kind, source)
    except ImportError:
        raise DataError(f"{where}: {kind.what} needs {kind.library}: pip install 'r1v[media]'") from None
    except Exception as e:  # the libraries' error types differ by version and container; the kind matters
        raise DataError(f"{where}: corrupt {kind.what}: {name} cannot be read as {kind.what} ({type(e).__name__})") \
            from None  # fmt: skip
    if n == 0:
        raise DataError(f"{where}: empty {kind.what}: {name} has no {kind.frames_word}")


def load(kind: MediaKind, source: Source, where: str, k: int = 0,
         video_frames: int = 4) -> AudioClip | list[Image.Image]:  # fmt: skip
    """``source`` decoded (a clip, or ``video_frames`` frames sampled uniformly), a bad item in :func:`check`'s words:
    what every reader does when a row is read (one decode, no separate probe)."""
    name, out, empty = _name(source, k, kind), None, f"has no {kind.frames_word}"
    try:
        if _size(source) == 0:
            empty = "is an empty file"
        elif kind is AUDIOS:
            clip = audio.decode(_open(source))
            out = clip if len(clip.samples) else None
        else:
            out = video.read_frames(_open(source), video_frames)
    except ImportError:
        raise DataError(f"{where}: {kind.what} needs {kind.library}: pip install 'r1v[media]'") from None
    except video.ZeroFrames:
        pass
    except Exception as e:  # gone since it was checked, or fails only when decoded
        raise DataError(f"{where}: corrupt {kind.what}: {name} cannot be decoded ({type(e).__name__})") from None
    if out is None:
        raise DataError(f"{where}: empty {kind.what}: {name} {empty}")
    return out


def check_placeholders(kind: MediaKind, question: str, n: int, where: str) -> None:
    """No more ``kind.placeholder`` in the question than the row has items (fewer are prepended when encoded)."""
    n_ph = str(question).count(kind.placeholder)
    if n_ph > n:
        raise DataError(f"{where}: placeholder count: {n_ph} {kind.placeholder} in the question but {n} {kind.plural}")

"""Datasets of Samples: the bundled synthetic tasks and users' JSONL files, validated up front.

JSONL schema (one object per line; the same schema ``python -m r1v data synth`` writes)::

    {"id": "optional", "images": ["rel/or/abs.png", ...] or "one.png", "question": "<image>\\n...",
     "answer": "3", "reasoning": "optional worked chain", "meta": {...},
     "audios": ["clip.wav", ...] or "one.wav",      # optional; one <audio> each in the question (issue 26)
     "videos": ["clip.mp4", ...] or "one.mp4"}      # optional; one <video> each: data.video.frames frames

``messages`` ([{"role": "user", "content": ...}]) may stand in for ``question``. Image paths are
relative to ``image_root`` (default: the JSONL file's folder). A bad row (missing field, missing or
corrupt image, wrong placeholder count) is skipped and counted (``on_bad_sample=skip``) or stops the
run before training (``on_bad_sample=error``), naming file, line and field. An image that fails only when
decoded, and a sample over ``data.max_tokens`` (:func:`too_long`), are found when the sample is read and
batched (:class:`r1v.data.collate.Collator`), under the same policy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import typing
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from torch.utils.data import Dataset

from r1v.core.errors import DataError
from r1v.core.interfaces import IMAGE_PLACEHOLDER, Sample
from r1v.data import media, synthetic

log = logging.getLogger(__name__)
BadSamplePolicy = Literal["skip", "error"]  # the annotation composition checks knobs against
BAD_SAMPLE_POLICIES: tuple[str, ...] = typing.get_args(BadSamplePolicy)


def too_long(where: str, n: int, limit: int | None) -> str | None:
    """The one length rule (``data check`` and the training collator): ``n`` tokens after image-token
    expansion against ``limit`` (``data.max_tokens``, default the backbone's context); the bad-row line, or None."""
    if not limit or n <= limit:
        return None
    return (
        f"{where}: too long: {n} tokens after image-token expansion (limit {limit}; fewer tiles with "
        "model.max_tiles, a larger data.max_tokens, or drop the row)"
    )


def image_path(rel: str, root: Path, real_root: Path, allow_outside_root: bool, where: str,
               what: str = "image") -> Path:  # fmt: skip
    """An image path of a row (relative ones under ``root``), checked where it resolves to (symlinks followed:
    where the bytes really are): inside
    ``real_root`` (``data.image_root`` resolved) unless ``allow_outside_root``, existing, a regular file (a FIFO or a
    device would hang or never end); else a one-line DataError naming ``where``. ``what``: the kind of file, for the
    message (the same rule covers ``audios``)."""
    p = Path(rel) if Path(rel).is_absolute() else root / rel
    real = p.resolve()
    if not allow_outside_root and not real.is_relative_to(real_root):
        raise DataError(f"{where}: {what} outside the data folder: {rel} resolves to {real}, outside "
                        f"data.image_root ({real_root}); move it under that folder or set "
                        "data.allow_outside_root=true")  # fmt: skip
    if not p.exists():
        raise DataError(f"{where}: missing {what}: {p} does not exist")
    if not real.is_file():
        raise DataError(f"{where}: not a regular file: {what} {p} is a special file (a FIFO, device or folder)")
    return p


def error_kind(message: str) -> str:
    """'<where>: <kind>: <why>' -> '<kind>' (how bad rows are counted and summarised)."""
    return message.split(": ", 2)[1] if message.count(": ") >= 2 else message


class SyntheticDataset(Dataset):
    """Samples generated on the fly; sample i of a split is always the same."""

    def __init__(self, n: int, split: str, seed: int = 0, image_size: int = 64,
                 tasks: tuple[str, ...] | list[str] = synthetic.TASKS) -> None:  # fmt: skip
        synthetic.check_synthetic("synthetic", n, split, tasks, synthetic.TASKS)
        self.n, self.split, self.seed, self.image_size, self.tasks = n, split, seed, image_size, tuple(tasks)
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        return synthetic.generate(i, self.split, self.seed, self.image_size, self.tasks)[0]


class JsonlDataset(Dataset):
    """Rows of a JSONL file, validated when built; images are decoded when a sample is read."""

    required: tuple[str, ...] = ("question", "answer")
    extra_fields: tuple[str, ...] = ()  # copied into Sample.meta

    def __init__(self, path: str | Path, image_root: str | Path | None = None, on_bad_sample: str = "skip",
                 require_reasoning: bool = False, allow_outside_root: bool = False,
                 video_frames: int = 4) -> None:  # fmt: skip
        self.video_frames = video_frames  # frames sampled per video (data.video.frames)
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise DataError(f"data.on_bad_sample: '{on_bad_sample}' is not allowed (use skip or error)")
        self.path, self.on_bad_sample = Path(path), on_bad_sample
        if not self.path.is_file():
            raise DataError(f"data: file {self.path} does not exist")
        self.root = Path(image_root) if image_root else self.path.parent
        self.allow_outside_root = allow_outside_root
        self._real_root = self.root.resolve()
        self.rows: list[dict[str, Any]] = []
        self.skipped: Counter[str] = Counter()
        self.bad: list[str] = []  # every bad row's one-line reason (python -m r1v data check prints them)
        self._ids: dict[str, int] = {}
        first_reason: dict[str, str] = {}
        with self.path.open() as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    self.rows.append(self._check(line, lineno, require_reasoning))
                except DataError as e:
                    if on_bad_sample == "error":
                        raise
                    kind = error_kind(str(e))
                    self.skipped[kind] += 1
                    self.bad.append(str(e))
                    first_reason.setdefault(kind, str(e))
        if self.skipped:
            log.warning("data: skipped %d bad rows of %s: %s", sum(self.skipped.values()), self.path,
                        "; ".join(first_reason.values()))  # fmt: skip
        if not self.rows:
            extra = f" ({sum(self.skipped.values())} bad rows skipped: {next(iter(first_reason.values()))})" \
                if first_reason else ""  # fmt: skip
            raise DataError(f"data: {self.path} has no usable samples{extra}")

    def _check(self, line: str, lineno: int, require_reasoning: bool) -> dict[str, Any]:
        where = f"{self.path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: not a JSON object: expected an object with question and answer")
        if "question" not in row and "messages" in row:
            users = [m.get("content", "") for m in row["messages"] if m.get("role") == "user"]
            row["question"] = "\n".join(users)
        for field in self.required:
            if row.get(field) is None or (isinstance(row[field], str) and not row[field].strip()):
                raise DataError(f"{where}: missing field '{field}': every row needs {' and '.join(self.required)} "
                                "(question may come as messages)")  # fmt: skip
            if not isinstance(row[field], str | int | float) or isinstance(row[field], bool):
                raise DataError(f"{where}: wrong type: field '{field}' is a {type(row[field]).__name__}; "
                                "it must be a string (or a number for answer)")  # fmt: skip
        row_id = str(row.get("id", f"{self.path.stem}-{lineno}"))
        if row_id in self._ids:
            raise DataError(f"{where}: duplicate id: '{row_id}' is also the id of line {self._ids[row_id]}")
        self._check_more(row, where)
        if require_reasoning and not row.get("reasoning"):
            raise DataError(f"{where}: missing field 'reasoning': stage.target=reasoning needs a worked chain")
        images = row.get("images") or ([row["image"]] if row.get("image") else [])
        if isinstance(images, str):  # one image given as a path, not a list of one
            images = [images]
        if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
            raise DataError(f"{where}: wrong type: 'images' must be a file path or a list of them (strings)")
        paths = []
        for rel in images:
            p = image_path(rel, self.root, self._real_root, self.allow_outside_root, where)
            try:
                with Image.open(p) as im:
                    im.verify()
            except Exception as e:
                raise DataError(f"{where}: corrupt image: {p} cannot be read ({type(e).__name__})") from None
            paths.append(str(p.resolve()))
        n_ph = str(row["question"]).count(IMAGE_PLACEHOLDER)
        if n_ph > len(paths):
            raise DataError(f"{where}: placeholder count: {n_ph} {IMAGE_PLACEHOLDER} in the question "
                            f"but {len(paths)} images")  # fmt: skip
        audio_paths, video_paths = (self._check_media(row, where, kind) for kind in media.KINDS)
        if row.get("meta") is not None and not isinstance(row["meta"], dict):
            raise DataError(f"{where}: wrong type: 'meta' is a {type(row['meta']).__name__}; it must be an object")
        meta = {**(row.get("meta") or {}), **{k: str(row[k]) for k in self.extra_fields}}
        self._ids[row_id] = lineno
        answer = row.get("answer")
        return {"id": row_id, "question": str(row["question"]), "answer": "" if answer is None else str(answer),
                "reasoning": row.get("reasoning"), "images": paths, "meta": meta, "line": lineno,
                **({"audios": audio_paths} if audio_paths else {}),
                **({"videos": video_paths} if video_paths else {})}  # fmt: skip

    def _check_media(self, row: dict[str, Any], where: str, kind: media.MediaKind) -> list[str]:
        """``row[kind.field]`` (``audios`` or ``videos``: a path or a list; relative to the data folder, contained as
        images are): each file read with at least one frame, no more placeholders than files (:mod:`r1v.data.media`,
        the rules every reader shares)."""
        paths = []
        for rel in media.as_list(row.get(kind.field), kind, where):
            p = image_path(rel, self.root, self._real_root, self.allow_outside_root, where, what=kind.what)
            media.check(kind, p, where)
            paths.append(str(p.resolve()))
        media.check_placeholders(kind, row["question"], len(paths), where)
        return paths

    def where(self, sample_id: str) -> str:
        """``file:line`` of a sample (how the training collator names a row it refuses)."""
        line = self._ids.get(sample_id)
        return f"{self.path}:{line}" if line else f"{self.path} (id {sample_id})"

    def _check_more(self, row: dict[str, Any], where: str) -> None:
        """Subclasses' extra checks of a parsed row (raise DataError)."""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        from r1v.data.images import to_rgb

        r = self.rows[i]
        images = []
        for p in r["images"]:
            try:
                with Image.open(p) as im:
                    images.append(to_rgb(im))
            except Exception as e:  # passed the header check, fails to decode: the collator skips and counts it
                error = f"{self.path}:{r['line']}: corrupt image: {p} cannot be decoded ({type(e).__name__})"
                if self.on_bad_sample == "error":
                    raise DataError(f"{error}; data.on_bad_sample=error stops here (skip drops the row)") from None
                meta = {**r["meta"], "_error": error}
                return Sample(r["id"], r["question"], r["answer"], [], r["reasoning"], meta, list(r["images"]))
        sample = Sample(r["id"], r["question"], r["answer"], images, r["reasoning"], r["meta"], list(r["images"]))
        where = f"{self.path}:{r['line']}"
        for kind, items, paths in ((media.AUDIOS, sample.audios, sample.audio_paths),
                                   (media.VIDEOS, sample.videos, sample.video_paths)):  # fmt: skip
            for p in r.get(kind.field, []):
                try:  # passed the check when built, fails now: skipped and counted as for images
                    items.append(media.load(kind, Path(p), where, video_frames=self.video_frames))
                except DataError as e:
                    if self.on_bad_sample == "error":
                        raise DataError(f"{e}; data.on_bad_sample=error stops here (skip drops the row)") from None
                    sample.audios, sample.videos, sample.meta = [], [], {**r["meta"], "_error": str(e)}
                    return sample
                paths.append(p)
        return sample


class OverlayDataset(Dataset):
    """A view of ``base``: the samples at ``indices``, with some reasoning chains replaced.

    What an iterative-SFT round trains on (its selected subset, chains re-distilled or not) without
    copying samples or images.
    """

    def __init__(self, base: Dataset, indices: list[int], reasoning: dict[int, str] | None = None) -> None:
        self.base, self.indices, self.reasoning = base, list(indices), dict(reasoning or {})

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        j = self.indices[i]
        sample = self.base[j]
        if j in self.reasoning:
            sample.reasoning = self.reasoning[j]
        return sample


class PairsDataset(JsonlDataset):
    """Preference pairs (``stage=mpo``, ``stage=reward_model``): the JSONL schema plus ``chosen`` and
    ``rejected``, two completions of the prompt (what follows the pre-filled ``<think>\\n``), kept in
    ``Sample.meta``; ``answer`` is optional (validation accuracy uses it when present)."""

    required = ("question", "chosen", "rejected")
    extra_fields = ("chosen", "rejected")

    def where(self, sample_id: str) -> str:
        """``file:line`` of a sample (how the training collator names a row it refuses)."""
        line = self._ids.get(sample_id)
        return f"{self.path}:{line}" if line else f"{self.path} (id {sample_id})"

    def _check_more(self, row: dict[str, Any], where: str) -> None:
        if str(row["chosen"]).strip() == str(row["rejected"]).strip():
            raise DataError(f"{where}: identical pair: chosen and rejected are the same text (no preference to learn)")


class SyntheticPairs(SyntheticDataset):
    """The synthetic tasks as preference pairs: chosen answers correctly, rejected gives a plausible wrong
    answer (a near count, another colour), in the completion format of ``style``: ``answer``
    (``</think>`` then ``\\boxed{}``) or ``reasoning`` (the worked chain first, for the wrong answer a
    chain that ends in it)."""

    def __init__(self, *args: Any, style: str = "answer", **kwargs: Any) -> None:
        if style not in ("answer", "reasoning"):
            raise DataError(f"data.style: '{style}' is not allowed (use answer or reasoning)")
        super().__init__(*args, **kwargs)
        self.style = style

    def __getitem__(self, i: int) -> Sample:
        import random

        from r1v.core.interfaces import THINK_CLOSE
        from r1v.data.processor import boxed

        s = super().__getitem__(i)
        wrong = synthetic.wrong_answer(s.answer, s.meta["task"], random.Random(f"{s.id}/wrong"))
        if self.style == "reasoning":
            chosen = f"{s.reasoning}\n{THINK_CLOSE}\n\n{boxed(s.answer)}"
            rejected = f"{s.reasoning.rsplit(s.answer, 1)[0]}{wrong}.\n{THINK_CLOSE}\n\n{boxed(wrong)}"
        else:
            chosen, rejected = f"{THINK_CLOSE}\n\n{boxed(s.answer)}", f"{THINK_CLOSE}\n\n{boxed(wrong)}"
        s.meta.update(chosen=chosen, rejected=rejected)
        return s


def image_refs(sample: Sample, out_dir: Path) -> list[str]:
    """Image paths for a JSONL row written to ``out_dir``, relative to it, so the file reads under the default
    containment rule (images inside its folder): the sample's source files hard-linked (copied across file
    systems) under ``out_dir/images/``, or generated images written there once as PNGs."""
    import os
    import re
    import shutil

    images = []
    if sample.image_paths:
        (out_dir / "images").mkdir(exist_ok=True)
    for source in sample.image_paths:
        src = Path(source)
        digest = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:10]  # same name, other folder: no clash
        rel = f"images/{digest}_{src.name}"
        if not (out_dir / rel).exists():
            try:
                os.link(src, out_dir / rel)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(src, out_dir / rel)
        images.append(rel)
    if not images and sample.images:
        (out_dir / "images").mkdir(exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", sample.id)
        for j, im in enumerate(sample.images):
            rel = f"images/{stem}_{j}.png"
            if not (out_dir / rel).exists():
                im.save(out_dir / rel)
            images.append(rel)
    return images

"""Videos → frames for the vision encoder (issue 26): decoded with PyAV (which ships its own FFmpeg), ``frames``
sampled uniformly (the middle frame of each of ``frames`` equal segments), each frame tiled like an image with at most
``max_tiles_per_frame`` tiles. A ``<video>`` in the question becomes one line per frame, ``Frame k: <image>``, so
the frames reach the model as ordinary image tiles at ``<IMG_CONTEXT>`` slots (no new token, no new model part);
the frame-index marker tells the LM which frame a tile belongs to.

``data.max_visual_tokens`` caps one sample's ``<IMG_CONTEXT>`` tokens (images and frames together), checked when the
sample is encoded, before any forward: over the budget the sample is bad (skipped and counted, or the run stops,
by ``data.on_bad_sample``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from r1v.core.interfaces import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER


@dataclass(frozen=True)
class VideoKnobs:
    """``data.video`` and ``data.max_visual_tokens``: frames per video, tiles per frame, the per-sample budget."""

    frames: int = 4
    max_tiles_per_frame: int = 1
    max_visual_tokens: int | None = None

    @classmethod
    def of(cls, data: Mapping[str, Any] | None) -> VideoKnobs:
        data = data or {}
        video = data.get("video") or {}
        knobs = cls(int(video.get("frames", 4)), int(video.get("max_tiles_per_frame", 1)),
                    None if data.get("max_visual_tokens") is None else int(data["max_visual_tokens"]))  # fmt: skip
        if knobs.frames < 1 or knobs.max_tiles_per_frame < 1:
            raise ValueError(f"data.video: frames={knobs.frames} and max_tiles_per_frame={knobs.max_tiles_per_frame} "
                             "must be ≥ 1")  # fmt: skip
        return knobs


class ZeroFrames(ValueError):
    """A video with no decodable frames (PyAV's own errors are ValueErrors too: this one is told apart)."""


def _source(path: str | Path | BinaryIO) -> str | BinaryIO:
    return str(path) if isinstance(path, str | Path) else path


def count_frames(path: str | Path | BinaryIO) -> int:
    """Decodable video frames of a file (decoded, not read from the header: containers often lie or omit it); 0
    when it has no video stream (an empty track is dropped by the muxer). Raises on a file PyAV cannot open."""
    import av

    with av.open(_source(path)) as container:
        if not container.streams.video:
            return 0
        return sum(1 for _ in container.decode(video=0))


def uniform_indices(total: int, n: int) -> list[int]:
    """``min(n, total)`` frame indices, the middle of each of that many equal segments."""
    k = min(n, total)
    return [int((i + 0.5) * total / k) for i in range(k)]


def read_frames(path: str | Path | BinaryIO, n: int) -> list[Image.Image]:
    """``n`` frames sampled uniformly (all of them when the video is shorter), as RGB images, from a file or a file
    object; :class:`ZeroFrames` (a ValueError) when the video has no frames."""
    import av

    with av.open(_source(path)) as container:
        frames = [f.to_image() for f in container.decode(video=0)] if container.streams.video else []
    if not frames:
        raise ZeroFrames(f"zero-frame video: {path} has no decodable frames")
    return [frames[i].convert("RGB") for i in uniform_indices(len(frames), n)]


def expand_videos(question: str, n_images: int, frames_per_video: list[int]) -> str:
    """The question with missing ``<image>`` (first) and ``<video>`` placeholders prepended, one per line, and each
    ``<video>`` replaced by ``Frame k: <image>`` lines; ValueError on more ``<video>`` placeholders than videos."""
    have = question.count(VIDEO_PLACEHOLDER)
    if have > len(frames_per_video):
        raise ValueError(f"placeholder count: the question has {have} {VIDEO_PLACEHOLDER} placeholders but the sample "
                         f"has {len(frames_per_video)} videos")  # fmt: skip
    missing_images = max(0, n_images - question.count(IMAGE_PLACEHOLDER))
    text = f"{IMAGE_PLACEHOLDER}\n" * missing_images + f"{VIDEO_PLACEHOLDER}\n" * (len(frames_per_video) - have)
    text += question
    for n in frames_per_video:
        frames = "\n".join(f"Frame {k}: {IMAGE_PLACEHOLDER}" for k in range(1, n + 1))
        text = text.replace(VIDEO_PLACEHOLDER, frames, 1)
    return text


def visual_order(question: str, n_images: int, frames_per_video: list[int]) -> list[tuple[str, int, int]]:
    """Which visual fills each ``<image>`` of :func:`expand_videos`'s text, in order: ("image", i, 0) or
    ("video", v, frame)."""
    have = question.count(VIDEO_PLACEHOLDER)
    missing_images = max(0, n_images - question.count(IMAGE_PLACEHOLDER))
    text = f"{IMAGE_PLACEHOLDER}\n" * missing_images + f"{VIDEO_PLACEHOLDER}\n" * (len(frames_per_video) - have)
    text += question
    order, img, vid, pos = [], 0, 0, 0
    while True:
        i, v = text.find(IMAGE_PLACEHOLDER, pos), text.find(VIDEO_PLACEHOLDER, pos)
        if i < 0 and v < 0:
            return order
        if v < 0 or 0 <= i < v:
            order.append(("image", img, 0))
            img, pos = img + 1, i + len(IMAGE_PLACEHOLDER)
        else:
            order += [("video", vid, k) for k in range(frames_per_video[vid])]
            vid, pos = vid + 1, v + len(VIDEO_PLACEHOLDER)


def with_data_knobs(processor: Any, data: Mapping[str, Any] | None) -> Any:
    """The processor with the run's ``data.video`` / ``data.max_visual_tokens`` (unchanged when they are defaults,
    so a run without video builds exactly the processor it did)."""
    knobs = VideoKnobs.of(data)
    return processor if knobs == processor.video else replace(processor, video=knobs)

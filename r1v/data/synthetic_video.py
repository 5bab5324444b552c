"""A synthetic video task, drawn with Pillow and written as small MPEG-4 files with PyAV: "Which way does the red
square move?".

Each clip has ``frames`` frames of ``size``² pixels: a red square slides in a straight line (left, right, up or
down) past one or two still distractor shapes of other colours. The answer is the direction; the ``<think>`` chain
says where the square starts and ends. Clip ``i`` of a split is the same for the same seed (a ``random.Random``
seeded by seed, split and index, as :mod:`r1v.data.synthetic` does for images), and the encoder runs
single-threaded, so the files are byte-identical run to run.

    python -c "from r1v.data.synthetic_video import write_moves; print(write_moves('moves', 32, 8))"

writes ``moves/train.jsonl`` (+ ``val.jsonl``) and the clips under ``moves/video/`` for ``data=jsonl``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

QUESTION = "<video>\nWhich way does the red square move?"
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OTHERS = ((40, 170, 60), (40, 80, 220), (230, 200, 30))  # green, blue, yellow: never red


def moving_square(i: int, split: str = "train", seed: int = 0, frames: int = 8,
                  size: int = 64) -> tuple[list[Image.Image], str, tuple[int, int], tuple[int, int]]:  # fmt: skip
    """Clip ``i`` of ``split``: (frames, direction, start and end of the square's centre)."""
    rng = random.Random(f"{seed}/{split}/moves/{i}")
    direction = rng.choice(sorted(DIRECTIONS))
    dx, dy = DIRECTIONS[direction]
    side = size // 6
    travel = size - 2 * side  # the square crosses most of the frame
    across = rng.randint(side, size - side)  # the fixed coordinate
    start = side if (dx or dy) > 0 else size - side
    still = [(rng.choice(OTHERS), rng.randint(side, size - side), rng.randint(side, size - side))
             for _ in range(rng.randint(1, 2))]  # fmt: skip
    out, centres = [], []
    for f in range(frames):
        along = start + (dx or dy) * round(travel * f / max(1, frames - 1))
        cx, cy = (along, across) if dx else (across, along)
        im = Image.new("RGB", (size, size), (245, 245, 245))
        draw = ImageDraw.Draw(im)
        for colour, x, y in still:
            draw.ellipse([x - side // 2, y - side // 2, x + side // 2, y + side // 2], fill=colour)
        draw.rectangle([cx - side // 2, cy - side // 2, cx + side // 2, cy + side // 2], fill=(220, 40, 40))
        out.append(im)
        centres.append((cx, cy))
    return out, direction, centres[0], centres[-1]


def write_mp4(path: str | Path, frames: list[Image.Image], fps: int = 4) -> None:
    """Frames -> an MPEG-4 Part 2 file (the encoder every FFmpeg build has), single-threaded so the bytes repeat."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.options = {"qscale": "2", "flags": "+bitexact"}
        container.metadata["encoder"] = "r1v"  # no library version in the header: the same bytes everywhere
        for im in frames:
            for packet in stream.encode(av.VideoFrame.from_image(im)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_moves(out_dir: str | Path, n_train: int, n_val: int = 0, seed: int = 0, frames: int = 8,
                size: int = 64) -> Path:  # fmt: skip
    """Write the train (and val) splits as JSONL + MP4s under ``out_dir``; returns the train JSONL's path."""
    out = Path(out_dir)
    (out / "video").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("val", n_val)):
        if not count:
            continue
        with (out / f"{split}.jsonl").open("w") as f:
            for i in range(count):
                clip, direction, (x0, y0), (x1, y1) = moving_square(i, split, seed, frames, size)
                rel = f"video/{split}_{i:05d}.mp4"
                write_mp4(out / rel, clip)
                row = {"id": f"moves-{split}-{i}", "videos": [rel], "question": QUESTION, "answer": direction,
                       "reasoning": f"The red square starts at ({x0}, {y0}) and ends at ({x1}, {y1}), so it moves "
                                    f"{direction}.",
                       "meta": {"task": "moves"}}  # fmt: skip
                f.write(json.dumps(row) + "\n")
    return out / "train.jsonl"

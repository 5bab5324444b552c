"""Deterministic synthetic visual-reasoning tasks drawn with Pillow.

Each scene places 1–5 coloured shapes on a 3×3 grid. Questions ask to count (all, by colour, by
shape), name a colour at a position, or do arithmetic on counts. Every sample carries a short worked
reasoning for ``<think>`` and a verifiable answer; ``describe()`` gives the scene as text, which is
what the tiny language models were pre-trained on in place of the image (see tools/pretrain_tiny.py).

Sample ``i`` of split ``s`` depends only on (seed, s, i): splits never overlap and any sample can
be regenerated alone.
"""

from __future__ import annotations

import difflib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from r1v.core.errors import DataError
from r1v.core.interfaces import IMAGE_PLACEHOLDER, Sample

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
TASKS = ("count_all", "count_color", "count_shape", "color_at", "add")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SPLIT_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}


def check_synthetic(name: str, n: int, split: str, tasks: tuple[str, ...] | list[str], known: tuple[str, ...],
                    what: str = "task", suggest: bool = False) -> None:  # fmt: skip
    """The checks every ``data=synthetic*`` dataset makes when built, as one-line DataErrors: each of ``tasks`` is
    one of ``known`` (the first unknown one named, with a close match when ``suggest``), and ``n`` > 0."""
    unknown = [t for t in tasks if t not in known]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], known, n=1) if suggest else []
        mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise DataError(f"data.tasks: unknown {what} '{unknown[0]}'{mean} (known: {', '.join(known)})")
    if n <= 0:
        raise DataError(f"data: the {name} {split} split is empty (n={n}); set a positive size")


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    cell: int  # 0..8, row-major on the 3×3 grid

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def text(self) -> str:
        return f"{self.color} {self.shape} at {self.position}"


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def random_scene(rng: random.Random, max_objects: int = 5) -> list[Obj]:
    n = rng.randint(1, max_objects)
    cells = sorted(rng.sample(range(9), n))
    return [Obj(rng.choice(list(COLORS)), rng.choice(SHAPES), c) for c in cells]


def describe(scene: list[Obj]) -> str:
    """The scene as text, in grid order: what a perfect vision front end would tell the LM."""
    return "; ".join(o.text() for o in scene) + "."


def place(scene: list[Obj], size: int, rng: random.Random) -> list[tuple[Obj, float, float, float]]:
    """Where :func:`draw` puts each object: (object, centre x, centre y, half side), jittered in place and size.
    Draws from ``rng`` exactly as drawing does, so a caller that needs only the text can skip the pixels and
    still leave ``rng`` where drawing would have."""
    cell, out = size / 3, []
    for o in scene:
        r, c = divmod(o.cell, 3)
        half = cell * rng.uniform(0.28, 0.38)
        cx = (c + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        cy = (r + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        out.append((o, cx, cy, half))
    return out


def draw(scene: list[Obj], size: int = 64, rng: random.Random | None = None) -> Image.Image:
    """Render the scene; small jitter in place and size keeps the encoder honest."""
    rng = rng or random.Random(0)
    img = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(img)
    for o, cx, cy, half in place(scene, size, rng):
        box = (cx - half, cy - half, cx + half, cy + half)
        fill = COLORS[o.color]
        if o.shape == "circle":
            d.ellipse(box, fill=fill)
        elif o.shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return img


def make_question(scene: list[Obj], task: str, rng: random.Random) -> tuple[str, str, str]:
    """(question, reasoning, answer) for ``task`` on ``scene``."""
    seen = "I see " + describe(scene)
    if task == "count_all":
        n = len(scene)
        return "How many shapes are in the image?", f"{seen} That is {n} {_plural('shape', n)}.", str(n)
    if task == "count_color":
        color = rng.choice(sorted({o.color for o in scene}) if rng.random() < 0.8 else list(COLORS))
        hits = [o for o in scene if o.color == color]
        listed = ", ".join(o.text() for o in hits) or "none"
        why = f"{seen} The {color} ones: {listed}. That makes {len(hits)}."
        return f"How many {color} shapes are there?", why, str(len(hits))
    if task == "count_shape":
        shape = rng.choice(sorted({o.shape for o in scene}) if rng.random() < 0.8 else list(SHAPES))
        hits = [o for o in scene if o.shape == shape]
        listed = ", ".join(o.text() for o in hits) or "none"
        why = f"{seen} The {shape}s: {listed}. That makes {len(hits)}."
        return f"How many {shape}s are there?", why, str(len(hits))
    if task == "color_at":
        o = rng.choice(scene)
        why = f"{seen} At {o.position} there is a {o.color} {o.shape}. Its colour is {o.color}."
        return f"What colour is the shape at {o.position}?", why, o.color
    if task == "add":
        s1, s2 = rng.sample(SHAPES, 2)
        n1 = sum(o.shape == s1 for o in scene)
        n2 = sum(o.shape == s2 for o in scene)
        why = f"{seen} There are {n1} {_plural(s1, n1)} and {n2} {_plural(s2, n2)}. {n1} + {n2} = {n1 + n2}."
        return f"How many {s1}s and {s2}s are there together?", why, str(n1 + n2)
    raise ValueError(f"unknown synthetic task '{task}' (known: {', '.join(TASKS)})")


def generate(
    index: int, split: str = "train", seed: int = 0, image_size: int = 64, tasks: tuple[str, ...] = TASKS
) -> tuple[Sample, list[Obj]]:
    """Sample ``index`` of ``split``: the Sample (with its image) and the scene it shows."""
    if split not in SPLIT_OFFSET:
        raise ValueError(f"unknown split '{split}' (known: {', '.join(SPLIT_OFFSET)})")
    rng = random.Random(f"r1v-synthetic/{seed}/{SPLIT_OFFSET[split] + index}")
    scene = random_scene(rng)
    task = tasks[index % len(tasks)]
    question, reasoning, answer = make_question(scene, task, rng)
    image = draw(scene, image_size, rng)
    sample = Sample(
        id=f"synthetic-{split}-{seed}-{index}",
        question=f"{IMAGE_PLACEHOLDER}\n{question}",
        answer=answer,
        images=[image],
        reasoning=reasoning,
        meta={"task": task, "scene": describe(scene)},
    )
    return sample, scene


def write_jsonl(out_dir: str | Path, n: int, split: str = "train", seed: int = 0, image_size: int = 64) -> Path:
    """Write ``n`` samples in the documented user format: ``<split>.jsonl`` + ``images/*.png``."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / f"{split}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            s, _ = generate(i, split, seed, image_size)
            rel = f"images/{s.id}.png"
            s.images[0].save(out / rel)
            row = {"id": s.id, "images": [rel], "question": s.question, "answer": s.answer,
                   "reasoning": s.reasoning, "meta": s.meta}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    return path


def wrong_answer(answer: str, task: str, rng: random.Random) -> str:
    """A plausible wrong answer of the same kind (a near count, another colour): rejected responses."""
    if task == "color_at":
        return rng.choice([c for c in COLORS if c != answer])
    n = int(answer)
    return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)

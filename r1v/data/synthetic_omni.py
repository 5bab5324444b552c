"""Synthetic omni tasks (issue 26): audio-only, video-only and mixed image+audio questions, generated in memory.

- ``beeps`` (audio): "How many beeps are there?" over 1–4 beeps, each low, mid or high (440, 660, 880 Hz);
- ``higher`` (audio): "Is the second tone higher than the first?" (yes / no, balanced);
- ``moves`` (video): three frames of a scene of :mod:`r1v.data.synthetic` in which a red square crosses a row or a
  column one cell per frame past still shapes: "Which way does the red square move?" (left, right, up, down);
- ``beeps_vs_shapes`` (image + audio): "Does the number of beeps equal the number of triangles?" (yes / no).

Everything is drawn with the image task's grid and colours, so the tiny vision encoder reads the frames, and every
sample carries its media as text (:func:`described`): a clip as one digit per audio token (:func:`hear`,
``0011000300``: nothing, low, mid, high), a frame as the scene description the tiny LMs were trained on. That
text is what the omni LMs learned to read inside ``<aud>…</aud>`` and ``<img>…</img>`` (tools/pretrain_tiny.py
--only omni), and the yardstick of the audio alignment: the substitute LM given the text instead of the media.
Sample ``i`` of a split depends only on (seed, split, i).
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
from torch.utils.data import Dataset

from r1v.core.interfaces import (
    AUD_END,
    AUD_START,
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    IMG_END,
    IMG_START,
    VIDEO_PLACEHOLDER,
    AudioClip,
    Sample,
)
from r1v.data import synthetic

TONES = {"low": 440.0, "mid": 660.0, "high": 880.0}
TASKS = ("beeps", "higher", "moves", "beeps_vs_shapes")
KIND = {"beeps": "audio", "higher": "audio", "moves": "video", "beeps_vs_shapes": "mixed"}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (row, column) steps
PITCH_CLASSES = ["none", *TONES]  # what sounds over an audio token: nothing, or a beep of a pitch
SAMPLING_RATE = 16000
TOKEN_SAMPLES = 1280  # 80 ms: one token of audio=whisper_tiny_pretrained (pool 4 × 2 convolution strides × hop 160)
SECONDS = 2.0
MAX_BEEPS = 4


def place_tones(pitches: list[str], rng: random.Random, sampling_rate: int = SAMPLING_RATE,
                seconds: float = SECONDS) -> tuple[int, list[tuple[int, int, str]]]:  # fmt: skip
    """Where :func:`render_tones` puts the beeps, without making the clip: (the noise's seed, each beep's (first
    sample, end sample, pitch)). Draws from ``rng`` exactly as rendering does."""
    total = int(seconds * sampling_rate)
    noise_seed = rng.getrandbits(32)
    beep = int(0.12 * sampling_rate)
    slot = total // MAX_BEEPS
    slots = sorted(rng.sample(range(MAX_BEEPS), len(pitches)))
    marks = []
    for k, pitch in zip(slots, pitches, strict=True):
        start = k * slot + rng.randint(0, slot - beep - 2 * TOKEN_SAMPLES)  # ≥ 2 silent tokens before the next
        marks.append((start, start + beep, pitch))
    return noise_seed, marks


def render_tones(pitches: list[str], rng: random.Random, sampling_rate: int = SAMPLING_RATE,
                 seconds: float = SECONDS) -> tuple[np.ndarray, list[tuple[int, int, str]]]:  # fmt: skip
    """120 ms beeps at the named pitches, in order, one per quarter of the clip at a random offset (never within two
    audio tokens of the next quarter, so two beeps never run together), over faint noise:
    (float32 samples in [-1, 1], each beep's (first sample, end sample, pitch))."""
    noise_seed, marks = place_tones(pitches, rng, sampling_rate, seconds)
    wave = np.random.default_rng(noise_seed).normal(0.0, 0.01, int(seconds * sampling_rate)).astype(np.float32)
    t = np.arange(int(0.12 * sampling_rate)) / sampling_rate
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
    for start, end, pitch in marks:
        wave[start:end] += (0.5 * np.sin(2 * np.pi * TONES[pitch] * t) * ramp).astype(np.float32)
    return np.clip(wave, -1.0, 1.0), marks


def token_labels(marks: list[tuple[int, int, str]], n_samples: int, samples_per_token: int,
                 n_tokens: int) -> np.ndarray:  # fmt: skip
    """(n_tokens,) per audio token of a clip: the class (PITCH_CLASSES) of the beep covering at least a quarter of the
    token's span, else 0 (nothing); -100 for tokens past the clip (the window's padding)."""
    y = np.full(n_tokens, -100, dtype=np.int64)
    for j in range(n_tokens):
        a, b = j * samples_per_token, (j + 1) * samples_per_token
        if a >= n_samples:
            break
        overlap, pitch = max(((min(b, e) - max(a, s), p) for s, e, p in marks), default=(0, "none"))
        y[j] = PITCH_CLASSES.index(pitch) if 4 * overlap >= b - a else 0
    return y


def hear(marks: list[tuple[int, int, str]], n_samples: int, samples_per_token: int = TOKEN_SAMPLES) -> str:
    """What a perfect ear at the audio encoder's token rate would tell the LM: one digit per token, 0 for nothing
    and 1, 2, 3 for a low, mid, high beep (``0011000300``). Digits are single tokens of the tiny tokenizer, so the
    text lines up one to one with the clip's ``<audio_ctx>`` tokens and the adapter's job is local: each audio token
    should read as its digit."""
    n_tokens = -(-n_samples // samples_per_token)
    return "".join(str(max(0, int(c))) for c in token_labels(marks, n_samples, samples_per_token, n_tokens))


def describe_tones(pitches: list[str]) -> str:
    """What a perfect ear would tell the LM: ``low beep, high beep.``"""
    return ", ".join(f"{p} beep" for p in pitches) + "."


def _beeps(rng: random.Random) -> tuple[list[str], str, str, str]:
    pitches = [rng.choice(list(TONES)) for _ in range(rng.randint(1, MAX_BEEPS))]
    n = len(pitches)
    why = f"I hear {describe_tones(pitches)} That is {n} {'beep' if n == 1 else 'beeps'}."
    return pitches, f"{AUDIO_PLACEHOLDER}\nHow many beeps are there?", why, str(n)


def _higher(rng: random.Random) -> tuple[list[str], str, str, str]:
    order = list(TONES)
    first, second = rng.sample(order, 2)  # two different pitches; "yes" when the second is higher
    pitches = [first, second, *(rng.choice(order) for _ in range(rng.randint(0, MAX_BEEPS - 2)))]
    answer = "yes" if order.index(second) > order.index(first) else "no"
    why = (f"I hear {describe_tones(pitches)} The first tone is {first}, the second is {second}, so the second is "
           f"{'higher' if answer == 'yes' else 'lower'}: {answer}.")  # fmt: skip
    return pitches, f"{AUDIO_PLACEHOLDER}\nIs the second tone higher than the first?", why, answer


def moving_scenes(rng: random.Random) -> tuple[list[list[synthetic.Obj]], str]:
    """Three scenes: a red square crossing a row or column one cell per frame, 1–2 still shapes elsewhere."""
    direction = rng.choice(sorted(DIRECTIONS))
    dr, dc = DIRECTIONS[direction]
    line = rng.randrange(3)
    path = [(line, c) if dc else (c, line) for c in range(3)]
    if dr < 0 or dc < 0:
        path.reverse()
    free = [c for c in range(9) if c not in {r * 3 + k for r, k in path}]
    others = [(c, k) for c in synthetic.COLORS for k in synthetic.SHAPES if (c, k) != ("red", "square")]
    still = [synthetic.Obj(*rng.choice(others), cell) for cell in rng.sample(free, rng.randint(1, 2))]
    scenes = [sorted([*still, synthetic.Obj("red", "square", r * 3 + c)], key=lambda o: o.cell) for r, c in path]
    return scenes, direction


def described(sample: Sample) -> str:
    """The question with each medium replaced by its text (``meta["media_text"]``, in placeholder order): what the
    substitute LM reads in place of the clip, frames and image."""
    text = sample.question
    for kind, desc in sample.meta["media_text"]:
        if kind == "audio":
            text = text.replace(AUDIO_PLACEHOLDER, f"{AUD_START}{desc}{AUD_END}", 1)
        elif kind == "image":
            text = text.replace(IMAGE_PLACEHOLDER, f"{IMG_START}{desc}{IMG_END}", 1)
        else:  # a video: its frames, as the processor lays them out (r1v.data.video.expand_videos)
            frames = "\n".join(f"Frame {k}: {IMG_START}{d}{IMG_END}" for k, d in enumerate(desc, 1))
            text = text.replace(VIDEO_PLACEHOLDER, frames, 1)
    return text


def generate(index: int, split: str = "train", seed: int = 0, image_size: int = 64,
             tasks: tuple[str, ...] = TASKS, render: bool = True) -> Sample:  # fmt: skip
    """Sample ``index`` of ``split``; task ``tasks[index % len(tasks)]``. ``render=False``: the same sample's text
    only (question, reasoning, answer, ``meta["media_text"]``: all :func:`described` needs) with no clip, frame or
    image made (``audios``, ``videos``, ``images`` left empty), at a fraction of the cost."""
    if split not in synthetic.SPLIT_OFFSET:
        raise ValueError(f"unknown split '{split}' (known: {', '.join(synthetic.SPLIT_OFFSET)})")
    rng = random.Random(f"r1v-omni/{seed}/{synthetic.SPLIT_OFFSET[split] + index}")
    task = tasks[index % len(tasks)]
    images, videos, audios, media = [], [], [], []

    def frame(scene: list[synthetic.Obj]):  # the picture, or just the draws from rng that drawing it makes
        return synthetic.draw(scene, image_size, rng) if render else synthetic.place(scene, image_size, rng)

    def clip(pitches: list[str]) -> tuple[str, str]:  # the clip (appended to audios) when rendering; its text
        if render:
            wave, marks = render_tones(pitches, rng)
            audios.append(AudioClip(wave, SAMPLING_RATE))
        else:
            marks = place_tones(pitches, rng)[1]
        return ("audio", hear(marks, int(SECONDS * SAMPLING_RATE)))

    if task in ("beeps", "higher"):
        pitches, question, why, answer = (_beeps if task == "beeps" else _higher)(rng)
        media.append(clip(pitches))
    elif task == "moves":
        scenes, answer = moving_scenes(rng)
        frames = [frame(s) for s in scenes]
        if render:
            videos.append(frames)
        media.append(("video", [synthetic.describe(s) for s in scenes]))
        where = [next(o.position for o in s if (o.color, o.shape) == ("red", "square")) for s in scenes]
        question = f"{VIDEO_PLACEHOLDER}\nWhich way does the red square move?"
        why = f"The red square is at {where[0]} in frame 1 and at {where[-1]} in frame 3, so it moves {answer}."
    elif task == "beeps_vs_shapes":
        scene = synthetic.random_scene(rng)
        while not 1 <= sum(o.shape == "triangle" for o in scene) <= MAX_BEEPS:
            scene = synthetic.random_scene(rng)
        t = sum(o.shape == "triangle" for o in scene)
        n = t if rng.random() < 0.5 else rng.choice([k for k in range(1, MAX_BEEPS + 1) if k != t])
        pitches = [rng.choice(list(TONES)) for _ in range(n)]
        image = frame(scene)
        if render:
            images.append(image)
        media += [("image", synthetic.describe(scene)), clip(pitches)]
        answer = "yes" if n == t else "no"
        question = f"{IMAGE_PLACEHOLDER}\n{AUDIO_PLACEHOLDER}\nDoes the number of beeps equal the number of triangles?"
        heard = f"{n} {'beep' if n == 1 else 'beeps'}"
        why = (f"I see {synthetic.describe(scene)} I hear {describe_tones(pitches)} That is {heard} and {t} "
               f"{'triangle' if t == 1 else 'triangles'}, so {answer}.")  # fmt: skip
    else:
        raise ValueError(f"data.tasks: unknown omni task '{task}' (known: {', '.join(TASKS)})")
    sample = Sample(id=f"omni-{split}-{seed}-{index}", question=question, answer=answer, images=images,
                    reasoning=why, meta={"task": task, "kind": KIND[task], "media_text": media}, audios=audios,
                    videos=videos)  # fmt: skip
    sample.meta["text_view"] = described(sample)  # what stage.text_teacher's substitute reads
    return sample


class SyntheticOmni(Dataset):
    """``data=synthetic_omni``: the omni tasks generated on the fly (clips and frames in memory, no files)."""

    def __init__(self, n: int, split: str, seed: int = 0, image_size: int = 64,
                 tasks: tuple[str, ...] | list[str] = TASKS) -> None:  # fmt: skip
        synthetic.check_synthetic("synthetic_omni", n, split, tasks, TASKS, what="omni task", suggest=True)
        self.n, self.split, self.seed, self.image_size, self.tasks = n, split, seed, image_size, tuple(tasks)
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        return generate(i, self.split, self.seed, self.image_size, self.tasks)

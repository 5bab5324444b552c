"""A synthetic audio task, rendered with numpy and written as WAVs with soundfile: "How many beeps?".

Each clip is ``seconds`` long at ``sampling_rate`` Hz: 1–``max_beeps`` short sine beeps (a random pitch per clip,
random gaps) over faint noise. The answer is the count, the ``<think>`` chain says what was heard. Clip ``i`` of a
split is the same for the same seed (a ``random.Random`` seeded by seed, split and index, as
:mod:`r1v.data.synthetic` does for images), so train and held-out splits never share a clip.

    python -c "from r1v.data.synthetic_audio import write_beeps; print(write_beeps('beeps', 64))"

writes ``beeps/train.jsonl`` (+ ``val.jsonl``) and the clips under ``beeps/audio/`` for ``data=jsonl``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

QUESTION = "<audio>\nHow many beeps are there?"


def beeps(i: int, split: str = "train", seed: int = 0, sampling_rate: int = 16000, seconds: float = 2.0,
          max_beeps: int = 4) -> tuple[np.ndarray, int]:  # fmt: skip
    """Clip ``i`` of ``split``: (float32 samples in [-1, 1], number of beeps)."""
    rng = random.Random(f"{seed}/{split}/beeps/{i}")
    n = rng.randint(1, max_beeps)
    total = int(seconds * sampling_rate)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 0.01, total)
    wave = noise.astype(np.float32)
    beep = int(0.12 * sampling_rate)  # 120 ms beeps: several fit with gaps in 2 s
    slot = total // max_beeps  # one beep per slot, at a random offset, so beeps never touch
    freq = rng.choice([440.0, 660.0, 880.0, 1000.0])
    t = np.arange(beep) / sampling_rate
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
    tone = (0.5 * np.sin(2 * np.pi * freq * t) * ramp).astype(np.float32)
    for k in sorted(rng.sample(range(max_beeps), n)):
        start = k * slot + rng.randint(0, slot - beep)
        wave[start : start + beep] += tone
    return np.clip(wave, -1.0, 1.0), n


def write_beeps(out_dir: str | Path, n_train: int, n_val: int = 0, seed: int = 0, sampling_rate: int = 16000,
                seconds: float = 2.0, max_beeps: int = 4) -> Path:  # fmt: skip
    """Write the train (and val) splits as JSONL + WAVs under ``out_dir``; returns the train JSONL's path."""
    import soundfile

    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("val", n_val)):
        if not count:
            continue
        with (out / f"{split}.jsonl").open("w") as f:
            for i in range(count):
                wave, n = beeps(i, split, seed, sampling_rate, seconds, max_beeps)
                rel = f"audio/{split}_{i:05d}.wav"
                soundfile.write(str(out / rel), wave, sampling_rate, subtype="PCM_16")
                row = {"id": f"beeps-{split}-{i}", "audios": [rel], "question": QUESTION, "answer": str(n),
                       "reasoning": f"I hear {n} separate beep{'s' if n > 1 else ''}, so the count is {n}.",
                       "meta": {"task": "beeps"}}  # fmt: skip
                f.write(json.dumps(row) + "\n")
    return out / "train.jsonl"

"""The omni tasks and tiny omni parts (issue 26): deterministic, balanced tasks whose media say what their text
says; the shipped tiny Whisper encoder hears pitches; its files and the omni LMs match omni.json; the default
model's files are untouched."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch

from r1v.core.errors import DataError
from r1v.data import synthetic_omni as omni


def test_tasks_are_deterministic_balanced_and_described():
    a, b = omni.generate(7, "train"), omni.generate(7, "train")
    assert a.question == b.question and np.array_equal(a.audios[0].samples, b.audios[0].samples)
    assert omni.generate(7, "val").id != a.id and omni.generate(7, "train", seed=1).reasoning != a.reasoning
    counts = Counter((s.meta["task"], s.answer) for s in map(lambda i: omni.generate(i, "val"), range(400)))
    for task in ("higher", "beeps_vs_shapes"):  # yes / no balanced
        assert abs(counts[(task, "yes")] - counts[(task, "no")]) <= 20, counts
    assert {d for (t, d) in counts if t == "moves"} == set(omni.DIRECTIONS)
    assert {int(n) for (t, n) in counts if t == "beeps"} == {1, 2, 3, 4}
    for i in range(8):
        s = omni.generate(i, "val")
        text = omni.described(s)
        assert "<audio>" not in text and "<video>" not in text and "<image>" not in text
        assert text.count("<aud>") == len(s.audios) and text.count("<img>") == len(s.images) + sum(map(len, s.videos))
        assert s.answer in (s.reasoning or "")
    # the audio text is one digit per audio token (80 ms), its runs of non-zero digits the beeps, in order
    for i in range(0, 80, 4):
        s = omni.generate(i, "val")
        digits = omni.described(s).split("<aud>")[1].split("</aud>")[0]
        runs = re.findall(r"[123]+", digits)
        assert len(digits) == 25 and len(runs) == int(s.answer), (s.id, digits)
        assert [omni.PITCH_CLASSES[int(r[0])] for r in runs] == re.findall(r"(low|mid|high) beep", s.reasoning or "")


def test_media_carry_the_answer():
    """The clip holds as many beeps as the answer says (energy bursts), and the red square's centroid in the
    frames moves the way the answer says."""
    for i in range(0, 40, 4):  # task beeps
        s = omni.generate(i, "val")
        wave = s.audios[0].samples
        frames = np.abs(wave[: len(wave) // 160 * 160]).reshape(-1, 160).max(1)  # 10 ms peaks
        loud = frames > 0.2
        bursts = int(loud[0]) + int(np.sum(loud[1:] & ~loud[:-1]))
        assert bursts == int(s.answer), (s.id, bursts, s.answer)
    for i in range(2, 40, 4):  # task moves
        s = omni.generate(i, "val")
        centres = []
        for im in s.videos[0]:
            px = np.asarray(im).astype(int)
            red = (px[..., 0] > 180) & (px[..., 1] < 90) & (px[..., 2] < 90)
            ys, xs = np.nonzero(red)
            centres.append((xs.mean(), ys.mean()))
        dx, dy = centres[-1][0] - centres[0][0], centres[-1][1] - centres[0][1]
        seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert seen == s.answer, (s.id, centres)


@pytest.mark.parametrize("task", omni.TASKS)
def test_text_only_samples_say_what_the_rendered_ones_say(task):
    """generate(render=False) (tools/pretrain_omni.py's omni_rows) makes no media yet gives the rendered sample's
    question, reasoning, answer and media text: it draws from the sample's rng exactly as rendering does."""
    for i in range(50):
        full = omni.generate(i, "train", seed=5000, tasks=(task,))
        text = omni.generate(i, "train", seed=5000, tasks=(task,), render=False)
        assert (text.id, text.question, text.reasoning, text.answer, text.meta) == \
            (full.id, full.question, full.reasoning, full.answer, full.meta)  # fmt: skip
        assert omni.described(text) == omni.described(full)
        assert not (text.audios or text.videos or text.images) and (full.audios or full.videos)


def test_unknown_task_is_one_line_with_a_hint():
    with pytest.raises(DataError, match=r"unknown omni task 'beep' \(did you mean 'beeps'\?\)"):
        omni.SyntheticOmni(4, "train", tasks=["beep"])


def test_shipped_omni_files_match_their_manifest_and_the_default_is_untouched():
    from r1v.model.parts import tiny

    omni_manifest = __import__("json").loads((tiny.HERE / tiny.OMNI_MANIFEST).read_text())
    for name, digest in omni_manifest["sha256"].items():
        assert tiny.sha256(tiny.HERE / name) == digest, name
    assert {"audio/model.safetensors", "lm_instruct_omni.safetensors", "lm_reasoner_omni.safetensors"} <= set(
        omni_manifest["sha256"]
    )
    for name, digest in tiny.manifest()["sha256"].items():  # the default model's parts
        assert tiny.sha256(tiny.HERE / name) == digest, name


def test_the_pretrained_tiny_whisper_hears_pitches(registry):
    """Nearest-centroid on the shipped encoder's tokens: centroids of each pitch (and silence) from 48 clips
    classify the tokens of 48 other clips ≥ 90% right; the random-weight encoder of the same shape does worse."""
    pytest.importorskip("soxr")
    from r1v.core.interfaces import AudioClip
    from r1v.data.audio import AudioSpec
    from r1v.data.synthetic_omni import PITCH_CLASSES, token_labels

    def tokens(enc, first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        spec = AudioSpec.of(enc)
        feats, labels = [], []
        for i in range(first, first + n):
            rng = __import__("random").Random(f"probe/{i}")
            pitches = [rng.choice(list(omni.TONES)) for _ in range(rng.randint(1, 4))]
            wave, marks = omni.render_tones(pitches, rng)
            f, _ = spec.features(AudioClip(wave, omni.SAMPLING_RATE))
            with torch.no_grad():
                feats.append(enc(f)[0])
            n_tok = feats[-1].shape[0]
            labels.append(
                torch.from_numpy(token_labels(marks, len(wave), enc.frames_per_token * enc.hop_length, n_tok))
            )
        x, y = torch.cat(feats), torch.cat(labels)
        return x[y >= 0], y[y >= 0]

    def probe(enc) -> float:
        x, y = tokens(enc, 0, 48)
        centroids = torch.stack([x[y == c].mean(0) for c in range(len(PITCH_CLASSES))])
        xt, yt = tokens(enc, 1000, 48)
        pred = torch.cdist(xt, centroids).argmin(1)
        beeps = yt > 0  # the pitch tokens (silence is most tokens)
        return float((pred[beeps] == yt[beeps]).float().mean())

    trained = registry.build("audio", "whisper", pretrained="builtin", pool=4)
    random = registry.build("audio", "whisper", preset="tiny_r1v", pool=4)
    acc, base = probe(trained), probe(random)
    assert acc >= 0.9 and acc > base + 0.1, (acc, base)

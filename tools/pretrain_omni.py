"""The omni tiny parts (issue 26), called by ``python tools/pretrain_tiny.py --only audio omni``:

* ``audio/``: a tiny Whisper encoder (preset ``tiny_r1v``: 64 wide, 2 layers, a 4 s window, pool 4 → one token per
  80 ms) trained to tell, for each of its output tokens, whether a low, mid or high beep sounds there (or none), so
  its tokens carry what the omni tasks ask (how many beeps, which is higher). Written as a Whisper checkpoint
  folder (config.json, model.safetensors, preprocessor_config.json) that ``audio=whisper pretrained=<folder>``
  loads like any local Whisper; ``audio=whisper_tiny_pretrained`` points at it.
* ``lm_instruct_omni.safetensors`` / ``lm_reasoner_omni.safetensors``: the shipped tiny LMs with the audio tokens
  added, trained on for a while on the omni tasks' text (``<aud>0011000300</aud>``: a digit per audio token, video
  frames as ``Frame k: <img>scene</img>`` lines; r1v.data.synthetic_omni.described) mixed with the image rows they were
  trained on, so they keep their image skill. The default tiny LMs' files are not touched.

Both get their own provenance file (``omni.json``): MANIFEST.json, which pins the default model, stays as it is.
"""

from __future__ import annotations

import json
import random

import torch
import torch.nn.functional as F
from lm_loop import lm_examples, save_lm, train_lm  # tools/ (on sys.path: tools/pretrain_tiny.py imports this file)

from r1v.data import synthetic_omni
from r1v.data.audio import AudioSpec
from r1v.data.synthetic_omni import PITCH_CLASSES, token_labels
from r1v.model.parts import tiny
from r1v.runtime.weights import to_cpu_contiguous


def tone_track(index: int, seed: int) -> tuple[torch.Tensor, list[str], list[tuple[int, int, str]]]:
    """A clip of 1–4 beeps of random pitches, and where each beep lies (start, end sample, pitch)."""
    rng = random.Random(f"omni-audio-pretrain/{seed}/{index}")
    pitches = [rng.choice(list(synthetic_omni.TONES)) for _ in range(rng.randint(1, synthetic_omni.MAX_BEEPS))]
    wave, marks = synthetic_omni.render_tones(pitches, rng)
    return torch.from_numpy(wave), pitches, marks


def pretrain_audio(steps: int, batch: int, seed: int, pool: int = 4) -> dict[str, str]:
    """Train the tiny Whisper encoder as a per-token beep-pitch tagger; write ``tiny/audio/``; return its hashes."""
    from safetensors.torch import save_file

    from r1v.core.interfaces import AudioClip
    from r1v.model.parts.whisper import whisper

    torch.manual_seed(seed)
    enc = whisper(preset="tiny_r1v", pool=pool, seed=seed)
    spec = AudioSpec.of(enc)
    samples_per_token = enc.frames_per_token * enc.hop_length
    n_tokens = spec.window_frames // enc.frames_per_token
    pool_size = 4096
    feats, labels = [], []
    for i in range(pool_size):  # a fixed pool of clips: features once, then many passes
        wave, _, marks = tone_track(i, seed)
        f, _ = spec.features(AudioClip(wave.numpy(), synthetic_omni.SAMPLING_RATE))
        feats.append(f[0])
        labels.append(torch.from_numpy(token_labels(marks, len(wave), samples_per_token, n_tokens)))
    x_all, y_all = torch.stack(feats), torch.stack(labels)  # (P, n_mels, W), (P, n_tokens)
    head = torch.nn.Linear(enc.hidden_size, len(PITCH_CLASSES))
    params = [*enc.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    order = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, pool_size, (batch,), generator=order)
        logits = head(enc(x_all[idx]))  # (B, n_tokens, classes)
        y = y_all[idx]
        loss = F.cross_entropy(logits.reshape(-1, len(PITCH_CLASSES)), y.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            keep = y >= 0
            acc = (logits.argmax(-1)[keep] == y[keep]).float().mean().item()
            print(f"audio step {step} loss {loss.item():.3f} token-acc {acc:.3f}", flush=True)
    out = tiny.HERE / tiny.AUDIO_FOLDER
    out.mkdir(exist_ok=True)
    enc.encoder.config.save_pretrained(str(out))
    save_file(to_cpu_contiguous(enc.encoder.state_dict()), str(out / "model.safetensors"))
    pre = {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": spec.n_mels,
           "sampling_rate": spec.sampling_rate, "hop_length": spec.hop_length,
           "chunk_length": spec.window_samples // spec.sampling_rate, "n_samples": spec.window_samples,
           "nb_max_frames": spec.window_frames, "padding_value": 0.0, "return_attention_mask": False}  # fmt: skip
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    return {f"{tiny.AUDIO_FOLDER}/{f.name}": tiny.sha256(f) for f in sorted(out.iterdir())}


def omni_rows(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(user text, reasoning, answer) of the omni tasks with their media as text (none rendered)."""
    rows = []
    for i in range(n):
        s = synthetic_omni.generate(i, "train", seed=5000 + seed, render=False)
        rows.append((synthetic_omni.described(s), s.reasoning or "", s.answer))
    return rows


def pretrain_omni_lm(variant: str, image_rows: list, steps: int, batch: int, seed: int) -> None:
    """Continue the shipped tiny ``variant`` LM on omni text mixed 1:1 with its image rows; write
    ``lm_<variant>_omni.safetensors``."""
    from r1v.core.interfaces import IMG_END, IMG_START
    from r1v.model.parts.backbones import tiny_lm

    torch.manual_seed(seed)
    bb = tiny_lm(f"{variant}_omni", pretrained=None)  # the audio tokens' rows added
    base = tiny_lm(variant)  # the shipped weights: copied in, the new rows start at the mean row
    state = base.model.state_dict()
    with torch.no_grad():
        for k, v in bb.model.state_dict().items():
            if v.shape == state[k].shape:
                v.copy_(state[k])
            else:  # the embedding (tied head): old rows kept, the audio tokens' rows the mean row
                v[: state[k].shape[0]] = state[k]
                v[state[k].shape[0] :] = state[k].mean(0)
    texts = [(f"{IMG_START}{d}{IMG_END}\n{q}", w, a) for d, q, w, a in image_rows]
    mixed = [x for pair in zip(texts, omni_rows(len(texts), seed), strict=True) for x in pair]
    train_lm(bb.model, bb.tokenizer, lm_examples(bb, mixed), steps, batch, 2e-3, seed, f"{variant}_omni")
    save_lm(bb.model, tiny.HERE / tiny.OMNI_WEIGHTS[f"{variant}_omni"])


def write_manifest(parts: list[str], command: str, hashes: dict[str, str], threads: int) -> None:
    """``omni.json``: per part (audio, omni) the command that made it, and the torch version, threads and SHA-256
    of every omni file (an earlier write's entries kept for the parts this run did not make)."""
    path = tiny.HERE / tiny.OMNI_MANIFEST
    old = json.loads(path.read_text()) if path.is_file() else {}
    commands = {**old.get("commands", {}), **dict.fromkeys(parts, command)}
    manifest = {"commands": commands, "torch": torch.__version__, "threads": threads,
                "sha256": {**old.get("sha256", {}), **hashes}}  # fmt: skip
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))

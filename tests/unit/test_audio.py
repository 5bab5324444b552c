"""Audio as a plugin kind (issue 26, first slice): the whisper encoder and audio adapter composed by name, ``audios`` in
JSONL with ``<audio>`` placeholders, tokens per clip from the frame rate and ``pool``, splicing at ``<audio_ctx>``
slots, every bad input one line under ``data.on_bad_sample``, and a tiny training run that learns."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")  # the ``audio`` extra (in ``dev``, so CI runs these)
pytest.importorskip("soxr")

AUDIO = ("audio=whisper_tiny",)


@pytest.fixture(scope="module")
def audio_vlm(registry, compose):
    """The default tiny model plus the tiny whisper encoder (4 s window, pool 4) and an MLP audio adapter."""
    from r1v.model.build import build

    torch.manual_seed(0)
    model, processor = build(compose(*AUDIO)["model"], registry)
    return model.eval(), processor


def _wav(path, seconds: float, rate: int = 16000, freq: float = 440.0):
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


def test_the_default_composition_has_no_audio_and_the_kinds_are_listed(registry, compose, tiny_vlm, capsys):
    from r1v.__main__ import main

    assert main(["plugins"]) == 0  # python -m r1v plugins
    listed = {tuple(line.split()[:2]) for line in capsys.readouterr().out.splitlines()}
    assert {("audio", "whisper"), ("audio_adapter", "mlp")} <= listed
    model, processor = tiny_vlm
    assert "audio" not in compose()["model"] and model.audio is None and processor.audio is None
    assert "<audio_ctx>" not in processor.tokenizer.get_vocab()  # tokens are added only when audio is composed
    assert registry.names("audio") == ["whisper"] and registry.names("audio_adapter") == ["mlp"]
    cfg = compose(*AUDIO)["model"]
    assert cfg["audio"]["name"] == "whisper" and cfg["audio_adapter"]["name"] == "mlp"  # the adapter comes along


def test_audio_composition_mistakes_are_one_line(registry, compose):
    from r1v.core.errors import ModelConfigError
    from r1v.model.build import build

    for overrides, line in ((("audio_adapter=mlp",), "audio_adapter=mlp needs an audio encoder: compose audio="),
                            ((*AUDIO, "model.audio.long_clips=trim"), "model.audio.long_clips: 'trim' is not allowed"),
                            ((*AUDIO, "model.audio_adapter.in_features=32"),
                             "audio_adapter 'mlp' expects audio features of width 32 but audio 'whisper' produces "
                             "width 64")):  # fmt: skip
        with pytest.raises(ModelConfigError) as e:
            build(compose(*overrides)["model"], registry)
        assert str(e.value).startswith(line) and "\n" not in str(e.value), str(e.value)


def test_tokens_per_clip_follow_the_frame_rate_pool_and_windows(audio_vlm):
    """4 s window = 400 mel frames; 2 frames per encoder frame × pool 4 = 8 frames per token: 1 s -> 13 tokens, a
    full window 50, 6 s split into 50 + 25; a clip at 8 kHz is resampled to the same count; refuse is one line."""
    from dataclasses import replace

    from r1v.core.interfaces import AudioClip

    _, processor = audio_vlm
    spec = processor.audio
    assert (spec.window_frames, spec.frames_per_token, spec.n_mels) == (400, 8, 80)
    for seconds, rate, windows, tokens in ((1, 16000, 1, 13), (4, 16000, 1, 50), (6, 16000, 2, 75), (1, 8000, 1, 13)):
        clip = AudioClip(np.zeros(seconds * rate, np.float32), rate)
        feats, frames = spec.features(clip)
        assert feats.shape == (windows, 80, 400) and spec.tokens(frames) == tokens, (seconds, rate, frames)
    with pytest.raises(ValueError, match=r"^audio too long: a clip of 6 s is longer than the encoder's window of 4 s"):
        replace(spec, long_clips="refuse").features(AudioClip(np.zeros(6 * 16000, np.float32), 16000))


def test_each_placeholder_lands_at_its_positions(audio_vlm):
    """One image and one audio clip in one sample (placeholders added in front): the image tokens sit at the
    <IMG_CONTEXT> slots, the clip's at the <audio_ctx> slots, text tokens keep their embeddings."""
    from PIL import Image

    from r1v.core.interfaces import AudioClip, Sample

    model, processor = audio_vlm
    rng = np.random.default_rng(0)
    clip = AudioClip(rng.normal(0, 0.1, 24000).astype(np.float32), 16000)  # 1.5 s -> ceil(150 / 8) = 19 tokens
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    sample = Sample("s", "What do you see and hear?", "x", images=[image], audios=[clip])
    enc = processor.encode(sample, target=None)
    text = processor.tokenizer.decode(enc["input_ids"])
    assert text.index("<img>") < text.index("<aud>") < text.index("What do you see")  # <image>\n<audio>\n first
    batch = processor.collate([enc], padding_side="left")
    assert batch["audio_windows"] == [1] and batch["audio_frames"].tolist() == [150]
    ids = batch["input_ids"]
    with torch.no_grad():
        embeds = model.embed(ids, batch["pixel_values"], batch["audio_features"], batch["audio_frames"])
        image_tokens = model.encode_images(batch["pixel_values"]).reshape(-1, embeds.shape[-1])
        audio_tokens = model.encode_audio(batch["audio_features"], batch["audio_frames"])
        plain = model.backbone.get_input_embeddings()(ids)
    img_slots, aud_slots = ids[0] == model.img_context_id, ids[0] == model.audio_context_id
    assert int(aud_slots.sum()) == 19 == audio_tokens.shape[0] and int(img_slots.sum()) == image_tokens.shape[0]
    torch.testing.assert_close(embeds[0, img_slots], image_tokens)
    torch.testing.assert_close(embeds[0, aud_slots], audio_tokens)
    torch.testing.assert_close(embeds[0, ~(img_slots | aud_slots)], plain[0, ~(img_slots | aud_slots)])
    with pytest.raises(ValueError, match=r"^the batch has 19 <audio_ctx> tokens but no audio$"):
        model.embed(ids, batch["pixel_values"])
    with pytest.raises(ValueError, match=r"^18 audio tokens \(1 windows\) do not fill the 19 <audio_ctx> slots"):
        model.embed(ids, batch["pixel_values"], batch["audio_features"], batch["audio_frames"] - 8)


def test_packed_rows_splice_the_same_audio_as_padded_ones(audio_vlm):
    """Packing (first fit, rows of samples) keeps each clip's windows in token order: per-sample losses equal."""
    from r1v.core.interfaces import AudioClip, Sample

    model, processor = audio_vlm
    rng = np.random.default_rng(2)
    samples = [Sample(f"s{i}", "How many beeps?", str(i), audios=[AudioClip(rng.normal(0, 0.1, n).astype(np.float32),
               16000)]) for i, n in enumerate((8000, 72000, 30000))]  # fmt: skip
    encoded = [processor.encode(s) for s in samples]
    packed = processor.pack(encoded, max_tokens=10_000, attn="eager")
    padded = processor.collate(encoded)
    assert packed["audio_windows"] == padded["audio_windows"] == [1, 2, 1]
    with torch.no_grad():
        a = model(packed["input_ids"], packed["attention_mask"], None, packed["labels"],
                  position_ids=packed["position_ids"], audio_features=packed["audio_features"],
                  audio_frames=packed["audio_frames"]).loss  # fmt: skip
        b = model(padded["input_ids"], padded["attention_mask"], None, padded["labels"],
                  audio_features=padded["audio_features"], audio_frames=padded["audio_frames"]).loss  # fmt: skip
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_audio_only_logits_equal_the_encoder_and_adapter_run_by_hand(audio_vlm):
    """A 5 s clip (two windows: 50 + 13 tokens) through WhisperEncoder, avg-pool, the MLP and the backbone by hand,
    against the model's forward."""
    from r1v.core.interfaces import AudioClip, Sample

    model, processor = audio_vlm
    clip = AudioClip(np.random.default_rng(1).normal(0, 0.1, 80000).astype(np.float32), 16000)
    batch = processor.collate([processor.encode(Sample("a", "<audio>\nHow many beeps?", "2", audios=[clip]))])
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                       audio_features=batch["audio_features"], audio_frames=batch["audio_frames"]).logits  # fmt: skip
        hidden = model.audio.encoder(batch["audio_features"]).last_hidden_state  # (2, 200, 64)
        pooled = hidden.reshape(2, 50, 4, 64).mean(2)  # avg-pool stride 4
        tokens = model.audio_adapter[3](model.audio_adapter[2](model.audio_adapter[1](model.audio_adapter[0](pooled))))
        kept = torch.cat([tokens[0], tokens[1, : math.ceil(100 / 8)]])  # the second window holds 1 s of audio
        embeds = model.backbone.get_input_embeddings()(batch["input_ids"]).clone()
        slots = (batch["input_ids"][0] == model.audio_context_id).nonzero().flatten()
        assert len(slots) == 63 == kept.shape[0] and batch["audio_frames"].tolist() == [400, 100]
        for j, pos in enumerate(slots.tolist()):
            embeds[0, pos] = kept[j]
        positions = torch.arange(embeds.shape[1])[None]
        by_hand = model.backbone(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                 position_ids=positions).logits  # fmt: skip
    torch.testing.assert_close(logits, by_hand)


def test_a_local_whisper_folder_loads_its_encoder(tmp_path):
    """pretrained=<folder> (a WhisperModel saved by transformers): the encoder's weights, its window from the
    checkpoint; a chunk_length that disagrees is one line."""
    from transformers import WhisperConfig, WhisperModel

    from r1v.model.parts.whisper import whisper

    cfg = WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                        max_source_positions=100, max_target_positions=16, vocab_size=64, pad_token_id=1,
                        bos_token_id=1, eos_token_id=1, decoder_start_token_id=1)  # fmt: skip
    torch.manual_seed(3)
    WhisperModel(cfg).save_pretrained(tmp_path)
    saved = WhisperModel.from_pretrained(tmp_path).encoder.state_dict()
    enc = whisper(pretrained=str(tmp_path), pool=2)
    assert (enc.window_frames, enc.hidden_size, enc.frames_per_token) == (200, 32, 4)
    for k, v in enc.encoder.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    assert enc(torch.zeros(1, 80, 200)).shape == (1, 50, 32)
    with pytest.raises(ValueError, match=r"chunk_length=30 s does not match the checkpoint's window of 200 mel"):
        whisper(pretrained=str(tmp_path), chunk_length=30)


def _rows(tmp_path):
    """One good row and one of each bad kind; returns the JSONL path."""
    _wav(tmp_path / "ok.wav", 1.0)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 8)
    (tmp_path / "notes.txt").write_text("not audio at all\n")
    soundfile.write(str(tmp_path / "silent.wav"), np.zeros(0, np.float32), 16000)
    _wav(tmp_path.parent / "outside.wav", 1.0)
    rows = [{"audios": ["ok.wav"], "question": "<audio>\nQ", "answer": "1"},
            {"audios": ["gone.wav"], "question": "Q", "answer": "1"},
            {"audios": ["empty.wav"], "question": "Q", "answer": "1"},
            {"audios": ["corrupt.wav"], "question": "Q", "answer": "1"},
            {"audios": "notes.txt", "question": "Q", "answer": "1"},
            {"audios": ["silent.wav"], "question": "Q", "answer": "1"},
            {"audios": ["ok.wav"], "question": "<audio><audio>\nQ", "answer": "1"},
            {"audios": ["../outside.wav"], "question": "Q", "answer": "1"}]  # fmt: skip
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


BAD = {2: "missing audio: ", 3: "empty audio: ", 4: "corrupt audio: ", 5: "corrupt audio: ", 6: "empty audio: ",
       7: "placeholder count: 2 <audio> in the question but 1 audio clips",
       8: "audio outside the data folder: "}  # fmt: skip


def test_bad_audio_rows_are_skipped_and_counted_each_in_one_line(tmp_path):
    from r1v.data.datasets import JsonlDataset

    ds = JsonlDataset(_rows(tmp_path))
    assert len(ds) == 1 and sum(ds.skipped.values()) == 7, ds.skipped
    for line, (lineno, kind) in zip(ds.bad, BAD.items(), strict=True):
        assert line.startswith(f"{ds.path}:{lineno}: {kind}") and "\n" not in line, line
    sample = ds[0]
    assert len(sample.audios) == 1 and sample.audios[0].sampling_rate == 16000 and sample.audio_paths


@pytest.mark.parametrize("lineno", sorted(BAD))
def test_under_on_bad_sample_error_a_bad_audio_row_refuses_to_start(tmp_path, lineno):
    from r1v.data.datasets import DataError, JsonlDataset

    path = _rows(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[lineno - 1] + "\n")
    with pytest.raises(DataError) as e:
        JsonlDataset(path, on_bad_sample="error")
    assert str(e.value).startswith(f"{path}:2: {BAD[lineno]}") and "\n" not in str(e.value), str(e.value)


def test_a_clip_longer_than_the_window_under_refuse_is_skipped_or_stops_the_run(audio_vlm, tmp_path):
    """long_clips=refuse: found when the sample is batched (the window is the model's), skipped and counted under
    skip, one line naming file:line under error, as over-long rows are."""
    from dataclasses import replace

    from r1v.core.errors import DataError
    from r1v.data.collate import Collator, Limits
    from r1v.data.datasets import JsonlDataset

    _, processor = audio_vlm
    _wav(tmp_path / "short.wav", 1.0)
    _wav(tmp_path / "long.wav", 5.0)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"audios": [a], "question": "Q", "answer": "1"}) + "\n"
                            for a in ("short.wav", "long.wav")))  # fmt: skip
    ds = JsonlDataset(path)
    refusing = replace(processor, audio=replace(processor.audio, long_clips="refuse"))
    batch = Collator(refusing, "answer", limits=Limits(where=ds.where))([ds[0], ds[1]])
    assert batch["skipped"] == 1 and batch["audio_windows"] == [1], batch["skipped_rows"]
    assert Collator(processor, "answer")([ds[1]])["audio_windows"] == [2]  # split: two windows
    with pytest.raises(DataError) as e:
        Collator(refusing, "answer", limits=Limits(on_bad_sample="error", where=ds.where))([ds[1]])
    assert str(e.value).startswith(f"{path}:2: cannot encode: audio too long: a clip of 5 s is longer than the "
                                   "encoder's window of 4 s")  # fmt: skip


def test_the_synthetic_beeps_are_deterministic_by_seed(tmp_path):
    from r1v.data.synthetic_audio import beeps, write_beeps

    a, n = beeps(3, "train", seed=0)
    b, m = beeps(3, "train", seed=0)
    assert n == m and np.array_equal(a, b) and 1 <= n <= 4 and a.dtype == np.float32 and len(a) == 32000
    assert not np.array_equal(a, beeps(3, "train", seed=1)[0]) and not np.array_equal(a, beeps(3, "val", seed=0)[0])
    path = write_beeps(tmp_path, 4, 2)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == 4 and (tmp_path / "val.jsonl").is_file()
    wave, rate = soundfile.read(str(tmp_path / rows[3]["audios"][0]), dtype="float32")
    assert rate == 16000 and rows[3]["answer"] == str(n) and np.abs(wave - a).max() < 1e-3  # PCM-16 rounding


def test_a_tiny_audio_run_learns(tmp_path):
    """python -m r1v.train with audio composed, on synthetic beeps: the audio adapter alone trains and the loss
    falls."""
    import csv

    from r1v.data.synthetic_audio import write_beeps
    from tests.conftest import run_cli

    train = write_beeps(tmp_path / "beeps", 48)
    proc = run_cli([*AUDIO, "data=jsonl", f"data.train={train}", "run=a", "stage.trainable=[audio_adapter]",
                    "stage.max_steps=12", "stage.batch_size=8", "stage.val_every=1000", "stage.val_generate=0",
                    "stage.ckpt_every=0", "logger=csv", "trainer.enable_progress_bar=false"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "audio whisper 0.14M (frozen); audio_adapter mlp 0.02M (trainable)" in proc.stdout + proc.stderr
    with open(tmp_path / "runs" / "a" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 12 and np.mean(losses[-4:]) < 0.5 * np.mean(losses[:2]), losses
    # the run brings back its own composition: the audio parts, the trained adapter and the saved random draws
    from safetensors.torch import load_file

    from r1v.core.config import compose
    from r1v.model.load import load_for_inference

    run = tmp_path / "runs" / "a"
    model, processor, _ = load_for_inference(compose([f"checkpoint={run}"]))
    saved = {
        **load_file(str(run / "final" / "trainable.safetensors")),
        **load_file(str(run / "random_init.safetensors")),
    }
    assert processor.audio is not None and {k.split(".")[0] for k in saved} == {"audio_adapter", "audio", "adapter"}
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())

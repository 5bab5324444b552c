"""Video (issue 26): ``videos`` in JSONL, ``<video>`` → uniformly sampled frames through the vision encoder as image
tiles behind ``Frame k:`` markers, the per-sample visual-token budget, every bad input one line under
``data.on_bad_sample``, the deterministic moving-square task, and a tiny training run that learns."""

from __future__ import annotations

import json

import pytest
import torch

av = pytest.importorskip("av")  # the ``media`` extra (in ``dev``, so CI runs these)


@pytest.fixture(scope="module")
def moves(tmp_path_factory):
    from r1v.data.synthetic_video import write_moves

    out = tmp_path_factory.mktemp("moves")
    write_moves(out, 24)
    return out


@pytest.fixture(scope="module")
def tiny(registry, compose):
    from r1v.model.build import build

    torch.manual_seed(0)
    model, processor = build(compose()["model"], registry)
    return model.eval(), processor


def test_frames_are_sampled_uniformly_and_the_task_is_deterministic(moves, tmp_path):
    from r1v.data.synthetic_video import write_moves
    from r1v.data.video import count_frames, read_frames, uniform_indices

    assert uniform_indices(8, 4) == [1, 3, 5, 7] and uniform_indices(3, 4) == [0, 1, 2]
    write_moves(tmp_path, 2)
    first = (moves / "video" / "train_00001.mp4").read_bytes()
    assert first == (tmp_path / "video" / "train_00001.mp4").read_bytes()  # byte-identical run to run
    assert count_frames(moves / "video" / "train_00001.mp4") == 8
    frames = read_frames(moves / "video" / "train_00001.mp4", 4)
    assert len(frames) == 4 and frames[0].size == (64, 64) and frames[0].mode == "RGB"
    row = json.loads((moves / "train.jsonl").read_text().splitlines()[1])
    assert row["answer"] in ("left", "right", "up", "down") and row["answer"] in row["reasoning"]


def test_each_frame_lands_at_its_positions_behind_its_marker(tiny):
    """A question with a video then an image: frames 1..3 fill the first <IMG_CONTEXT> runs in order, the image the
    last one; each equals the encoder + adapter run by hand on that frame alone."""
    from PIL import Image

    from r1v.core.interfaces import IMG_CONTEXT, Sample
    from r1v.data.images import preprocess

    model, processor = tiny
    frames = [Image.new("RGB", (64, 64), (40 * k, 200 - 40 * k, 90)) for k in range(3)]
    image = Image.new("RGB", (64, 64), (10, 10, 250))
    s = Sample("v", "<video>\nWhat moves? <image>", "left", images=[image], videos=[frames])
    enc = processor.encode(s)
    text = processor.tokenizer.decode(enc["input_ids"])
    assert [f"Frame {k}: <img>" in text for k in (1, 2, 3)] == [True] * 3 and "Frame 4" not in text
    batch = processor.collate([enc])
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["pixel_values"])[0]  # (L, D)
        tiling = (processor.image_size, 1, False, processor.image_mean, processor.image_std)
        expected = torch.cat([model.encode_images(preprocess(im, *tiling))[0] for im in [*frames, image]])
    slots = batch["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    assert int(slots.sum()) == 4 * processor.tokens_per_tile
    torch.testing.assert_close(embeds[slots], expected)


def test_audio_video_and_image_placeholders_each_land_at_their_positions(registry, compose):
    """One sample with two clips, two videos and an image, placeholders interleaved: every <IMG_CONTEXT> run and
    every <audio_ctx> run holds exactly the tokens of its own item, in the question's order."""
    import numpy as np
    from PIL import Image

    from r1v.core.interfaces import AUDIO_CONTEXT, IMG_CONTEXT, AudioClip, Sample
    from r1v.data.audio import audio_inputs
    from r1v.data.images import preprocess
    from r1v.model.build import build

    torch.manual_seed(0)
    model, processor = build(compose("audio=whisper_tiny")["model"], registry)
    model.eval()
    clips = [AudioClip((0.3 * np.sin(np.arange(n) / d)).astype(np.float32), 16000) for n, d in ((8000, 3), (24000, 7))]
    videos = [[Image.new("RGB", (64, 64), (30 * k + 20 * v, 90, 200 - 50 * k)) for k in range(2)] for v in range(2)]
    image = Image.new("RGB", (64, 64), (250, 10, 10))
    s = Sample("m", "<video>\n<audio>\n<image>\n<video>\n<audio>\nSay.", "x", images=[image], videos=videos,
               audios=clips)  # fmt: skip
    batch = processor.collate([processor.encode(s)])
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["pixel_values"], **audio_inputs(batch))[0]
        tiling = (processor.image_size, 1, False, processor.image_mean, processor.image_std)
        order = [videos[0][0], videos[0][1], image, videos[1][0], videos[1][1]]  # the question's order
        want_img = torch.cat([model.encode_images(preprocess(im, *tiling))[0] for im in order])
        want_aud = torch.cat([model.encode_audio(*(torch.as_tensor(x) for x in processor.audio.features(c)))
                              for c in clips])  # fmt: skip
    ids = batch["input_ids"][0]
    tok = processor.tokenizer.convert_tokens_to_ids
    torch.testing.assert_close(embeds[ids == tok(IMG_CONTEXT)], want_img)
    torch.testing.assert_close(embeds[ids == tok(AUDIO_CONTEXT)], want_aud)
    first_audio, image_slot = int((ids == tok(AUDIO_CONTEXT)).nonzero()[0]), 2 * processor.tokens_per_tile
    assert int((ids == tok(IMG_CONTEXT)).nonzero()[image_slot - 1]) < first_audio  # video 1 comes before audio 1


def _video_rows(tmp_path, moves):
    import shutil

    shutil.copy(moves / "video" / "train_00000.mp4", tmp_path / "ok.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with av.open(str(tmp_path / "zero.mp4"), "w", format="mp4") as c:  # a container whose only track is empty
        stream = c.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 64
        c.start_encoding()
    rows = [{"question": "<video>\nWhich way?", "answer": "up", "videos": "ok.mp4"},
            {"question": "<video>\nWhich way?", "answer": "up", "videos": ["junk.mp4"]},
            {"question": "<video>\nWhich way?", "answer": "up", "videos": ["zero.mp4"]},
            {"question": "<video>\n<video>\nWhich way?", "answer": "up", "videos": ["ok.mp4"]}]  # fmt: skip
    path = tmp_path / "v.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_videos_are_skipped_and_counted_each_in_one_line(tmp_path, moves):
    from r1v.core.errors import DataError
    from r1v.data.datasets import JsonlDataset

    path = _video_rows(tmp_path, moves)
    ds = JsonlDataset(path, video_frames=3)
    assert len(ds) == 1 and len(ds[0].videos[0]) == 3 and ds[0].video_paths == [str(tmp_path / "ok.mp4")]
    assert dict(ds.skipped) == {"corrupt video": 1, "empty video": 1, "placeholder count": 1}
    assert [b.split(": ")[1] for b in ds.bad] == ["corrupt video", "empty video", "placeholder count"]
    assert all("\n" not in b for b in ds.bad) and "2 <video> in the question but 1 videos" in ds.bad[2]
    with pytest.raises(DataError, match=r"v.jsonl:2: corrupt video: .*junk.mp4 cannot be read as video"):
        JsonlDataset(path, on_bad_sample="error")


def test_the_visual_token_budget_is_checked_before_the_forward(tiny, tmp_path, moves):
    from dataclasses import replace

    from r1v.core.errors import DataError
    from r1v.data.collate import Collator, Limits
    from r1v.data.datasets import JsonlDataset
    from r1v.data.video import VideoKnobs, with_data_knobs

    _, processor = tiny
    sample = JsonlDataset(_video_rows(tmp_path, moves), video_frames=4)[0]
    assert with_data_knobs(processor, {"name": "synthetic"}) is processor  # no video knobs: the same processor
    budget = with_data_knobs(processor, {"video": {"frames": 4}, "max_visual_tokens": 3 * processor.tokens_per_tile})
    assert budget.video == VideoKnobs(4, 1, 48)
    batch = Collator(budget, "answer")([sample])
    assert batch["skipped"] == 1 and batch["skipped_rows"] == {sample.id: "cannot encode"}
    with pytest.raises(DataError, match=r"visual-token budget: 64 visual tokens .* data.on_bad_sample=error stops"):
        Collator(budget, "answer", limits=Limits(on_bad_sample="error"))([sample])
    assert Collator(replace(budget, video=VideoKnobs(4, 1, 64)), "answer")([sample])["skipped"] == 0


def test_a_tiny_video_run_learns(moves, tmp_path):
    """python -m r1v.train on the moving-square videos (data.video.frames=3, adapter and LM training: the tiny LM
    never saw the direction words): the loss falls."""
    import csv

    from tests.conftest import run_cli

    proc = run_cli(["data=jsonl", f"data.train={moves / 'train.jsonl'}", "data.video.frames=3", "run=v",
                    "stage.max_steps=8", "stage.batch_size=8", "stage.lr=1e-2", "stage.trainable=[adapter,backbone]",
                    "stage.val_every=1000",
                    "stage.val_generate=0", "stage.ckpt_every=0", "logger=csv",
                    "trainer.enable_progress_bar=false"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "runs" / "v" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < 0.5 * sum(losses[:2]) / 2, losses


def test_inference_takes_the_runs_video_knobs(compose):
    """chat / eval / generate build the model with :func:`r1v.model.load.inference_model` from the run's config:
    its ``data.video`` knobs reach the processor (they used to be the defaults)."""
    from r1v.model.load import inference_model

    cfg = compose("data=jsonl", "data.train=x.jsonl", "data.video.frames=2", "data.max_visual_tokens=999")
    _, processor = inference_model(cfg)
    assert processor.video.frames == 2 and processor.video.max_visual_tokens == 999

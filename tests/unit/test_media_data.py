"""Audio clips and videos in every reader (issue 26, data side): Parquet and save_to_disk folders carry ``audios`` and
``videos`` through their column mappings into the same Samples as JSONL (paths under the data folder's containment
rule, or bytes decoded from memory), and ``python -m r1v data check`` names and counts every bad audio or video row,
in JSONL and in shards, as it does images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

soundfile = pytest.importorskip("soundfile")  # the ``media`` extra (in ``dev``, so CI runs these)
pytest.importorskip("soxr")
av = pytest.importorskip("av")

from r1v.core.errors import DataError  # noqa: E402
from r1v.data.datasets import JsonlDataset  # noqa: E402
from r1v.data.hf_disk import HfDiskDataset  # noqa: E402
from r1v.data.parquet import ParquetDataset  # noqa: E402
from tests.unit.test_hf_disk_data import save_to_disk  # noqa: E402

ROWS = [  # what every reader must reproduce: audio only, video only, both with an image-free question
    {"id": "a", "audios": ["audio/train_00000.wav"], "question": "<audio>\nHow many beeps?", "answer": "2"},
    {"id": "v", "videos": ["video/train_00000.mp4"], "question": "<video>\nWhich way?", "answer": "up"},
    {"id": "av", "audios": ["audio/train_00001.wav"], "videos": ["video/train_00001.mp4"],
     "question": "<audio>\n<video>\nBoth?", "answer": "yes"},
]  # fmt: skip


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Two 0.25 s beep clips and two 3-frame 32-px videos (the synthetic tasks' writers), and one bad file of each
    kind."""
    from r1v.data.synthetic_audio import write_beeps
    from r1v.data.synthetic_video import write_moves

    out = tmp_path_factory.mktemp("media")
    write_beeps(out, 2, seconds=0.25, max_beeps=1)
    write_moves(out, 2, frames=3, size=32)
    (out / "audio" / "empty.wav").write_bytes(b"")
    (out / "audio" / "notes.wav").write_text("not audio at all\n")
    (out / "video" / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with av.open(str(out / "video" / "zero.mp4"), "w", format="mp4") as c:  # a container whose only track is empty
        stream = c.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 32
        c.start_encoding()
    return out


def _folder(media: Path, tmp_path: Path) -> Path:
    """The media copied under a fresh data folder (the containment root of every reader here)."""
    for sub in ("audio", "video"):
        shutil.copytree(media / sub, tmp_path / sub)
    return tmp_path


def _jsonl(folder: Path, rows: list[dict], **kw) -> JsonlDataset:
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return JsonlDataset(path, video_frames=2, **kw)


def _columns(rows: list[dict]) -> dict:
    return {k: [r.get(k, []) if k in ("audios", "videos") else r[k] for r in rows]
            for k in ("id", "question", "answer", "audios", "videos")}  # fmt: skip


def _same(a, b) -> None:
    assert (a.id, a.question, a.answer, a.audio_paths, a.video_paths) == \
        (b.id, b.question, b.answer, b.audio_paths, b.video_paths)  # fmt: skip
    assert [(c.sampling_rate, c.samples.tobytes()) for c in a.audios] == \
        [(c.sampling_rate, c.samples.tobytes()) for c in b.audios]  # fmt: skip
    assert [[f.tobytes() for f in v] for v in a.videos] == [[f.tobytes() for f in v] for v in b.videos]


def test_parquet_and_hf_disk_read_audio_and_video_paths_into_the_jsonl_samples(media, tmp_path):
    folder = _folder(media, tmp_path)
    expected = _jsonl(folder, ROWS)
    assert len(expected) == 3 and len(expected[2].videos[0]) == 2 and expected[0].audios[0].sampling_rate == 16000
    pq.write_table(pa.table(_columns(ROWS)), folder / "rows.parquet", row_group_size=2)
    hf = save_to_disk(folder / "hf", _columns(ROWS), shards=2)
    for ds in (ParquetDataset(folder / "rows.parquet", video_frames=2),
               HfDiskDataset(hf, image_root=folder, video_frames=2)):  # fmt: skip
        assert len(ds) == 3
        for i in range(3):
            _same(ds[i], expected[i])
        assert not ds.bad


def test_audio_and_video_bytes_decode_from_memory_as_the_files_do(media, tmp_path):
    """A binary column and the ``{bytes, path}`` struct of datasets' Audio/Video features: the same clips and frames
    as the files, no paths (nothing written anywhere)."""
    folder = _folder(media, tmp_path)
    expected = _jsonl(folder, ROWS)
    raw = {k: [[(folder / p).read_bytes() for p in r.get(k, [])] for r in ROWS] for k in ("audios", "videos")}
    as_struct = [[{"bytes": b, "path": "clip.wav"} for b in row] for row in raw["audios"]]
    base = {k: [r[k] for r in ROWS] for k in ("id", "question", "answer")}
    pq.write_table(pa.table({**base, **raw}), folder / "bytes.parquet")
    hf = save_to_disk(folder / "hf", {**base, "audios": as_struct, "videos": raw["videos"]})
    for ds in (ParquetDataset(folder / "bytes.parquet", video_frames=2),
               HfDiskDataset(hf, video_frames=2)):  # fmt: skip
        for i in range(3):
            got, want = ds[i], expected[i]
            assert got.audio_paths == [] and got.video_paths == []
            got.audio_paths, got.video_paths = want.audio_paths, want.video_paths
            _same(got, want)
    assert sorted(p.name for p in folder.iterdir()) == ["audio", "bytes.parquet", "hf", "rows.jsonl", "video"]
    bad = {"question": ["Q", "Q", "Q"], "answer": ["1", "1", "1"], "audios": [[b"junk"], [b""], [None]],
           "videos": [[], [], [b"not a video"]]}  # fmt: skip
    pq.write_table(pa.table(bad), folder / "bad.parquet")
    ds = ParquetDataset(folder / "bad.parquet")
    errors = [ds[i].meta["_error"].split(" (", 2)[:2] for i in range(3)]  # the libraries' error names vary
    at = folder / "bad.parquet"
    assert errors == [[f"{at}:0: corrupt audio: audio 0", "4 bytes) cannot be decoded"],
                      [f"{at}:1: empty audio: audio 0", "0 bytes) is an empty file"],
                      [f"{at}:2: corrupt video: video 0", "11 bytes) cannot be decoded"]]  # fmt: skip


def test_llava_preset_maps_audio_and_video_columns(media, tmp_path):
    folder = _folder(media, tmp_path)
    expected = _jsonl(folder, ROWS[2:])
    turns = [[{"from": "human", "value": ROWS[2]["question"]}, {"from": "gpt", "value": "yes"}]]
    pq.write_table(pa.table({"id": ["av"], "conversations": turns, "audio": ROWS[2]["audios"],
                             "video": ROWS[2]["videos"]}), folder / "llava.parquet")  # fmt: skip
    _same(ParquetDataset(folder / "llava.parquet", preset="llava", video_frames=2)[0], expected[0])


def test_media_paths_escaping_the_data_folder_are_refused(media, tmp_path):
    folder = _folder(media, tmp_path / "data")
    shutil.copy(media / "audio" / "train_00000.wav", tmp_path / "x.wav")
    shutil.copy(media / "video" / "train_00000.mp4", tmp_path / "x.mp4")
    rows = [{"id": "a", "audios": ["../x.wav"], "question": "Q", "answer": "1"},
            {"id": "v", "videos": ["../x.mp4"], "question": "Q", "answer": "1"}]  # fmt: skip
    path = folder / "out.parquet"
    pq.write_table(pa.table(_columns(rows)), path)
    ds = ParquetDataset(path)
    assert ds[0].meta["_error"].startswith(f"{path}:0: audio outside the data folder: ../x.wav resolves to")
    assert ds[1].meta["_error"].startswith(f"{path}:1: video outside the data folder: ../x.mp4 resolves to")
    assert dict(ds.skipped) == {"audio outside the data folder": 1, "video outside the data folder": 1}
    with pytest.raises(DataError, match=r"out\.parquet:0: audio outside the data folder: \.\./x\.wav .*; data\."):
        ParquetDataset(path, on_bad_sample="error")[0]
    assert len(ParquetDataset(path, allow_outside_root=True, video_frames=1)[1].videos[0]) == 1
    hf = save_to_disk(folder / "hf", _columns(rows))
    assert "audio outside the data folder: ../x.wav" in HfDiskDataset(hf, image_root=folder)[0].meta["_error"]


def test_a_missing_or_wrong_typed_media_column_is_one_line_naming_the_columns(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"question": ["q"], "answer": ["a"], "sound": [3]}), path)
    with pytest.raises(DataError) as e:
        ParquetDataset(path, columns={"audios": "clips"})
    assert str(e.value) == (f"{path}: no column 'clips' (data.columns.audios; preset r1v); columns: question, "
                            "answer, sound")  # fmt: skip
    with pytest.raises(DataError) as e:
        ParquetDataset(path, columns={"videos": "sound"})
    assert str(e.value).startswith(f"{path}: column 'sound' (data.columns.videos) has type int64; videos must be a "
                                   "path (string), encoded bytes")  # fmt: skip
    assert str(e.value).endswith("; columns: question, answer, sound") and "\n" not in str(e.value)


BAD_ROWS = [  # (row, the kind data check must report)
    ({"audios": ["audio/gone.wav"], "question": "Q", "answer": "1"}, "missing audio"),
    ({"audios": ["audio/empty.wav"], "question": "Q", "answer": "1"}, "empty audio"),
    ({"audios": ["audio/notes.wav"], "question": "Q", "answer": "1"}, "corrupt audio"),
    ({"videos": ["video/junk.mp4"], "question": "Q", "answer": "1"}, "corrupt video"),
    ({"videos": ["video/zero.mp4"], "question": "Q", "answer": "1"}, "empty video"),
    ({"audios": ["audio/train_00000.wav"], "question": "<audio><audio>\nQ", "answer": "1"}, "placeholder count"),
    ({"videos": ["video/train_00000.mp4"], "question": "<video><video>\nQ", "answer": "1"}, "placeholder count"),
]  # fmt: skip
NAMED = ["gone.wav", "empty.wav", "notes.wav", "junk.mp4", "zero.mp4", "2 <audio> in the question but 1 audio clips",
         "2 <video> in the question but 1 videos"]  # fmt: skip


def test_data_check_names_and_counts_every_bad_audio_and_video_row(media, tmp_path, compose):
    """JSONL (checked when read), Parquet and save_to_disk (checked shard by shard): the same bad rows, one line
    each naming the file, the row and the item, counted by kind; the good rows encode with the audio encoder."""
    from r1v.data.check import check

    folder = _folder(media, tmp_path)
    rows = ROWS[:2] + [{"id": f"b{k}", **r} for k, (r, _) in enumerate(BAD_ROWS)]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table(_columns(rows)), folder / "rows.parquet", row_group_size=4)
    hf = save_to_disk(folder / "hf", _columns(rows))
    sources = [("data=jsonl", folder / "rows.jsonl", 3), ("data=parquet", folder / "rows.parquet", 2),
               ("data=hf_disk", hf / "data-00000-of-00001.arrow", 2)]  # fmt: skip
    for data, shard, first in sources:
        train = shard if data != "data=hf_disk" else hf
        extra = [f"data.image_root={folder}"] if data == "data=hf_disk" else []
        (report,) = check(compose(data, f"data.train={train}", "audio=whisper_tiny", "data.video.frames=2", *extra),
                          use_cache=False)  # fmt: skip
        assert report.rows == len(rows) and len(report.bad) == len(BAD_ROWS), (data, report.bad)
        for k, (line, (_, kind), name) in enumerate(zip(report.bad, BAD_ROWS, NAMED, strict=True)):
            assert line.startswith(f"{shard}:{first + k}: {kind}: ") and name in line and "\n" not in line, line
        assert report.kinds == {"missing audio": 1, "empty audio": 1, "corrupt audio": 1, "corrupt video": 1,
                                "empty video": 1, "placeholder count": 2}  # fmt: skip
        text = "\n".join(report.lines())
        assert f"{len(rows)} rows, {len(BAD_ROWS)} bad" in text and "by kind: placeholder count 2" in text


def test_the_data_check_verb_prints_bad_audio_and_video_rows_like_image_ones(media, tmp_path, capsys):
    from r1v.__main__ import main

    folder = _folder(media, tmp_path)
    rows = ROWS[:1] + [r for r, _ in BAD_ROWS[2:5]]
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "check", str(path), "audio=whisper_tiny", "--workers", "1"]) == 1  # bad rows: exit 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"data check: {path} (train): 4 rows, 3 bad (on_bad_sample=skip trains on 1")
    assert [line.split(": ")[:2] for line in out[1:4]] == [[f"  {path}:2", "corrupt audio"],
                                                           [f"  {path}:3", "corrupt video"],
                                                           [f"  {path}:4", "empty video"]]  # fmt: skip
    assert out[4] == "by kind: corrupt audio 1, corrupt video 1, empty video 1"


def test_the_report_shows_a_samples_audio_and_video_as_it_shows_its_image(media, tmp_path):
    """completions.jsonl keeps each clip's file name and duration and each video's sampled frames and first frame;
    the report's rollout section shows them; a row from before (an image thumbnail only) renders as it did."""
    from r1v.reports.html import rollout_sections, sample_media

    ds = _jsonl(_folder(media, tmp_path), ROWS)
    done = {"text": "x</think>\n\\boxed{yes}", "reward": 1.0, "advantage": 0.0, "tokens": 4}
    row = {"step": 3, "id": "av", "question": "Both?", "answer": "yes", **sample_media(ds[2]), "completions": [done]}
    row = json.loads(json.dumps(row))  # as the stage writes it and the report reads it
    assert row["thumb"] is None and row["audios"] == [{"name": "train_00001.wav", "seconds": 0.25}]
    assert [(v["name"], v["frames"], bool(v["thumb"])) for v in row["videos"]] == [("train_00001.mp4", 2, True)]
    page = rollout_sections([row])
    assert "audio train_00001.wav (0.25 s) · video train_00001.mp4 (2 frames)" in page
    assert page.count('<img alt="video train_00001.mp4" src="data:image/png;base64,') == 1
    old = rollout_sections([{k: v for k, v in row.items() if k not in ("audios", "videos")}])
    assert 'class="media"' not in old and "<img" not in old

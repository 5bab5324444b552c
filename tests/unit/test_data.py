"""Synthetic generator, tiling, JSONL validation (bad rows), processor formatting, resumable sampler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1v.data.datasets import DataError, JsonlDataset, SyntheticDataset
from r1v.data.images import choose_grid, tile_image
from r1v.data.sampler import ResumableSampler
from r1v.data.synthetic import generate, write_jsonl


def test_generator_is_deterministic_and_splits_differ():
    a, scene_a = generate(7, "train", seed=3)
    b, scene_b = generate(7, "train", seed=3)
    assert scene_a == scene_b and a.question == b.question and a.answer == b.answer
    assert a.images[0].tobytes() == b.images[0].tobytes()
    questions = {generate(i, "train")[0].meta["scene"] for i in range(50)}
    held_out = {generate(i, "val")[0].meta["scene"] for i in range(50)}
    assert len(questions) > 40 and len(questions & held_out) < 5


@pytest.mark.parametrize(("cls", "kw", "line"), [
    ("SyntheticDataset", {"n": 0, "split": "val"}, "data: the synthetic val split is empty (n=0); set a positive size"),
    ("SyntheticDataset", {"n": 3, "split": "train", "tasks": ["count_al"]},
     "data.tasks: unknown task 'count_al' (known: count_all, count_color, count_shape, color_at, add)"),
    ("SyntheticHard", {"n": -1, "split": "test"},
     "data: the synthetic_hard test split is empty (n=-1); set a positive size"),
    ("SyntheticHard", {"n": 0, "split": "train", "tasks": ["rows_dif"]},  # the tasks are checked first
     "data.tasks: unknown task 'rows_dif' (known: relation_count, more_plus, rows_diff)"),
    ("SyntheticOmni", {"n": 0, "split": "val"},
     "data: the synthetic_omni val split is empty (n=0); set a positive size"),
    ("SyntheticOmni", {"n": 3, "split": "train", "tasks": ["hihger"]},
     "data.tasks: unknown omni task 'hihger' (did you mean 'higher'?) (known: beeps, higher, moves, beeps_vs_shapes)"),
])  # fmt: skip
def test_synthetic_datasets_check_tasks_and_size_in_one_line(cls, kw, line):
    """The three synthetic datasets share one check (r1v.data.synthetic.check_synthetic); each keeps its wording."""
    from r1v.data.synthetic_hard import SyntheticHard
    from r1v.data.synthetic_omni import SyntheticOmni

    dataset = {"SyntheticDataset": SyntheticDataset, "SyntheticHard": SyntheticHard, "SyntheticOmni": SyntheticOmni}
    with pytest.raises(DataError) as e:
        dataset[cls](**kw)
    assert str(e.value) == line


def test_answers_follow_from_the_scene():
    for i in range(100):
        s, scene = generate(i, "train")
        if s.meta["task"] == "count_all":
            assert s.answer == str(len(scene))
        assert s.answer in s.reasoning


@pytest.mark.parametrize(("size", "max_tiles", "grid", "n"), [
    ((64, 64), 1, (1, 1), 1), ((128, 64), 4, (2, 1), 3), ((64, 192), 6, (1, 3), 4), ((256, 256), 4, (2, 2), 5),
])  # fmt: skip
def test_dynamic_tiling(size, max_tiles, grid, n):
    from PIL import Image

    assert choose_grid(*size, tile=64, max_tiles=max_tiles) == grid
    assert len(tile_image(Image.new("RGB", size), 64, max_tiles)) == n


@pytest.fixture()
def data_dir(tmp_path):
    write_jsonl(tmp_path, 6, "train")
    return tmp_path


def rewrite(path, edit):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edit(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_round_trip(data_dir):
    ds = JsonlDataset(data_dir / "train.jsonl")
    assert len(ds) == 6
    s = ds[0]
    assert s.images[0].size == (64, 64) and s.answer == generate(0, "train")[0].answer


def test_one_image_may_be_a_path_instead_of_a_list(data_dir):
    rewrite(data_dir / "train.jsonl", lambda rows: rows[0].update(images=rows[0]["images"][0]))
    ds = JsonlDataset(data_dir / "train.jsonl", on_bad_sample="error")
    assert len(ds) == 6 and ds[0].images[0].size == (64, 64)


@pytest.mark.parametrize(("breakage", "message"), [
    ("no_answer", "missing field 'answer'"),
    ("missing_image", "missing image"),
    ("corrupt_image", "corrupt image"),
])  # fmt: skip
def test_bad_rows_are_skipped_and_counted_or_refused(data_dir, breakage, message):
    path = data_dir / "train.jsonl"
    if breakage == "no_answer":
        rewrite(path, lambda rows: rows[2].pop("answer"))
    elif breakage == "missing_image":
        (data_dir / json.loads(path.read_text().splitlines()[2])["images"][0]).unlink()
    else:
        (data_dir / json.loads(path.read_text().splitlines()[2])["images"][0]).write_bytes(b"\x89PNG\r\n garbage")
    ds = JsonlDataset(path, on_bad_sample="skip")
    assert len(ds) == 5 and sum(ds.skipped.values()) == 1
    with pytest.raises(DataError) as e:
        JsonlDataset(path, on_bad_sample="error")
    assert f"train.jsonl:3: {message}" in str(e.value) and "\n" not in str(e.value)


def test_empty_dataset_refuses_to_start(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="has no usable samples"):
        JsonlDataset(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="is empty"):
        SyntheticDataset(0, "train")


def test_all_rows_bad_says_why(data_dir):
    rewrite(data_dir / "train.jsonl", lambda rows: [r.pop("answer") for r in rows])
    with pytest.raises(DataError, match=r"no usable samples \(6 bad rows skipped: .*missing field 'answer'"):
        JsonlDataset(data_dir / "train.jsonl")


def test_bad_policy_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="on_bad_sample: 'ignore' is not allowed"):
        JsonlDataset(tmp_path / "x.jsonl", on_bad_sample="ignore")
    with pytest.raises(DataError, match="does not exist"):
        JsonlDataset(tmp_path / "x.jsonl")


def test_reasoner_prompt_is_prefilled_and_completion_is_r1_format(registry, compose):
    from r1v.model.build import build

    _, proc = build(compose("model=tiny_reasoner")["model"], registry)
    s, _ = generate(0, "train")
    prompt = proc.prompt(s.question, [1])
    assert prompt.endswith("<｜Assistant｜><think>\n") and prompt.count("<IMG_CONTEXT>") == 16
    assert proc.completion(s, "reasoning") == f"{s.reasoning}\n</think>\n\n\\boxed{{{s.answer}}}"


def test_sampler_resumes_mid_epoch_without_repeats():
    full = ResumableSampler(20, seed=1)
    full.set_epoch(2)
    order = list(full)
    resumed = ResumableSampler(20, seed=1)
    resumed.resume_at(2, 8)
    resumed.set_epoch(2)
    assert list(resumed) == order[8:]
    resumed.set_epoch(3)
    assert sorted(resumed) == list(range(20))  # next epoch is whole again
    ranks = [list(ResumableSampler(20, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])


def test_image_paths_must_stay_inside_the_data_folder(data_dir, tmp_path_factory):
    """A row may not make the loader open any file on the machine: ../ and absolute paths out of the data folder,
    symlinks out of it and special files are refused in one line naming file:line; data.allow_outside_root opts
    out; an absolute path inside the folder is fine."""
    import os

    outside = tmp_path_factory.mktemp("elsewhere")
    first = json.loads((data_dir / "train.jsonl").read_text().splitlines()[0])["images"][0]
    (outside / "x.png").write_bytes((data_dir / first).read_bytes())
    (data_dir / "link.png").symlink_to(outside / "x.png")
    os.mkfifo(data_dir / "fifo.png")
    cases = {"../" + outside.name + "/x.png": "image outside the data folder", str(outside / "x.png"): "outside",
             "link.png": "outside", "fifo.png": "not a regular file"}  # fmt: skip
    for path, message in cases.items():
        rewrite(data_dir / "train.jsonl", lambda rows, p=path: rows[0].update(images=[p]))
        with pytest.raises(DataError, match=message) as e:
            JsonlDataset(data_dir / "train.jsonl", on_bad_sample="error")
        assert "\n" not in str(e.value) and str(e.value).startswith(f"{data_dir / 'train.jsonl'}:1: ")
    for path in (str(outside / "x.png"), "link.png"):
        rewrite(data_dir / "train.jsonl", lambda rows, p=path: rows[0].update(images=[p]))
        assert JsonlDataset(data_dir / "train.jsonl", on_bad_sample="error", allow_outside_root=True)[0].images
    rewrite(data_dir / "train.jsonl", lambda rows: rows[0].update(images=[str((data_dir / first).resolve())]))
    assert len(JsonlDataset(data_dir / "train.jsonl", on_bad_sample="error")) == 6


def test_rows_r1v_writes_keep_their_images_beside_them(data_dir, tmp_path):
    """distilled.jsonl / pairs.jsonl rows name their images relative to their own folder (hard links or copies of
    the sources), so they read back under the containment rule."""
    from r1v.data.datasets import image_refs

    source = JsonlDataset(data_dir / "train.jsonl", on_bad_sample="error")
    out = tmp_path / "run"
    out.mkdir()
    rows = [{"id": f"r{i}", "question": source[i].question, "answer": source[i].answer,
             "images": image_refs(source[i], out)} for i in range(3)]  # fmt: skip
    (out / "written.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert all(not Path(p).is_absolute() for r in rows for p in r["images"])
    again = JsonlDataset(out / "written.jsonl", on_bad_sample="error")
    assert [s.images[0].tobytes() for s in again] == [source[i].images[0].tobytes() for i in range(3)]

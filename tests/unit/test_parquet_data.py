"""data=parquet: presets read into the same Samples as JSONL, path and bytes images, bad input one line each,
and a start-up that reads footers only."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from r1v.core.errors import DataError
from r1v.data.datasets import JsonlDataset
from r1v.data.parquet import ParquetDataset


def png(color: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name, color in (("a.png", (255, 0, 0)), ("b.png", (0, 255, 0))):
        (tmp_path / "img" / name).write_bytes(png(color))
    return tmp_path


ROWS = [  # the JSONL rows every preset must reproduce
    {"id": "r0", "images": ["img/a.png"], "question": "<image>\nHow many?", "answer": "3", "reasoning": "one two"},
    {"id": "r1", "images": ["img/b.png"], "question": "<image>\nWhat colour?", "answer": "green", "reasoning": "look"},
    {"id": "r2", "images": [], "question": "What is 2+2?", "answer": "4", "reasoning": "add"},
]


def jsonl(folder: Path, rows: list[dict]) -> JsonlDataset:
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return JsonlDataset(path)


def write(path: Path, columns: dict, row_group_size: int | None = None) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def same(a, b) -> None:
    assert (a.id, a.question, a.answer, a.reasoning, a.meta, a.image_paths) == \
        (b.id, b.question, b.answer, b.reasoning, b.meta, b.image_paths)  # fmt: skip
    assert [im.tobytes() for im in a.images] == [im.tobytes() for im in b.images]


def test_r1v_preset_matches_jsonl_across_files_and_row_groups(folder):
    expected = jsonl(folder, ROWS)
    write(folder / "part-0.parquet", {k: [r[k] for r in ROWS[:2]] for k in ROWS[0]}, row_group_size=1)
    write(folder / "part-1.parquet", {k: [r[k] for r in ROWS[2:]] for k in ROWS[0]})
    ds = ParquetDataset(str(folder / "part-*.parquet"))
    assert len(ds) == 3 and ds.row_groups == [1, 2, 3]
    for i in range(3):
        same(ds[i], expected[i])
    assert ds.where("r2") == f"{folder / 'part-1.parquet'}:0"


def test_llava_preset_matches_jsonl(folder):
    expected = jsonl(folder, [{k: v for k, v in r.items() if k != "reasoning"} for r in ROWS])
    conversations = [[{"from": "human", "value": r["question"]}, {"from": "gpt", "value": r["answer"]}] for r in ROWS]
    write(folder / "llava.parquet", {"id": [r["id"] for r in ROWS], "image": [(r["images"] or [None])[0] for r in ROWS],
                                     "conversations": conversations})  # fmt: skip
    ds = ParquetDataset(folder / "llava.parquet", preset="llava")
    for i in range(3):
        same(ds[i], expected[i])


@pytest.mark.parametrize("preset", ["sharegpt", "openai"])
def test_messages_presets_match_jsonl(folder, preset):
    rows = [{"id": r["id"], "images": r["images"], "answer": r["answer"],
             "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": r["question"]}]}
            for r in ROWS]  # fmt: skip
    expected = jsonl(folder, rows)
    messages = [[*r["messages"], {"role": "assistant", "content": r["answer"]}] for r in rows]
    write(folder / "m.parquet", {"id": [r["id"] for r in rows], "images": [r["images"] for r in rows],
                                 "messages": messages})  # fmt: skip
    ds = ParquetDataset(folder / "m.parquet", preset=preset)
    for i in range(3):
        same(ds[i], expected[i])


def test_column_mapping_and_image_bytes(folder):
    expected = jsonl(folder, ROWS[:2])
    hf_images = [{"bytes": png((255, 0, 0)), "path": None}, {"bytes": png((0, 255, 0)), "path": None}]
    write(folder / "hf.parquet", {"prompt": [r["question"] for r in ROWS[:2]], "label": [r["answer"] for r in ROWS[:2]],
                                  "image": hf_images, "uid": ["r0", "r1"]})  # fmt: skip
    ds = ParquetDataset(folder / "hf.parquet", columns={"question": "prompt", "answer": "label", "images": "image",
                                                        "id": "uid"})  # fmt: skip
    for i in range(2):
        s = ds[i]
        assert s.image_paths == [] and [im.tobytes() for im in s.images] == [expected[i].images[0].tobytes()]
        assert (s.id, s.question, s.answer) == (expected[i].id, expected[i].question, expected[i].answer)
    by_path = [{"bytes": None, "path": "img/b.png"}]  # HF's Image feature without embedded bytes: a path
    write(folder / "p.parquet", {"question": ["<image>\nq"], "answer": ["a"], "images": by_path})
    assert ParquetDataset(folder / "p.parquet")[0].image_paths == [str((folder / "img/b.png").resolve())]
    write(folder / "bin.parquet", {"question": ["<image>\nq"], "answer": [1], "images": [[png((1, 2, 3))] * 2]})
    s = ParquetDataset(folder / "bin.parquet")[0]
    assert len(s.images) == 2 and s.answer == "1" and s.id == "bin-0"


def test_glob_that_matches_nothing(tmp_path):
    with pytest.raises(DataError, match=r"^data.train: the glob '.*nope-\*.parquet' matches no files$"):
        ParquetDataset(str(tmp_path / "nope-*.parquet"))


def test_missing_column_names_the_columns_that_exist(folder):
    write(folder / "t.parquet", {"questoin": ["q"], "answer": ["a"]})
    with pytest.raises(DataError, match=r"no column 'question' \(data.columns.question; preset r1v\); columns: "
                                        r"questoin, answer — did you mean 'questoin'\?"):  # fmt: skip
        ParquetDataset(folder / "t.parquet")
    with pytest.raises(DataError, match=r"no column 'img' \(data.columns.images"):
        ParquetDataset(folder / "t.parquet", columns={"question": "questoin", "images": "img"})
    with pytest.raises(DataError, match=r"^data.columns: unknown field 'anwser' .* did you mean 'answer'\?"):
        ParquetDataset(folder / "t.parquet", columns={"anwser": "answer"})


def test_column_of_the_wrong_type(folder):
    write(folder / "t.parquet", {"question": [1.5], "answer": ["a"]})
    with pytest.raises(DataError, match=r"column 'question' \(data.columns.question\) has type double; question "
                                        r"must be a string; columns: question, answer$"):  # fmt: skip
        ParquetDataset(folder / "t.parquet")
    write(folder / "u.parquet", {"question": ["q"], "answer": ["a"], "images": [[1, 2]]})
    with pytest.raises(DataError, match=r"column 'images' .* images must be a path \(string\), encoded bytes"):
        ParquetDataset(folder / "u.parquet")


def test_undecodable_bytes_skipped_and_counted_or_refused(folder):
    write(folder / "t.parquet", {"question": ["<image>\nq", "<image>\nr"], "answer": ["a", "b"],
                                 "images": [png((9, 9, 9)), b"not an image"]})  # fmt: skip
    ds = ParquetDataset(folder / "t.parquet")
    assert ds[0].images and "_error" not in ds[0].meta
    bad = ds[1]
    assert bad.meta["_error"] == f"{folder / 't.parquet'}:1: corrupt image: image 0 (12 bytes) cannot be decoded " \
        "(UnidentifiedImageError)"  # fmt: skip
    assert ds.skipped == {"corrupt image": 1} and ds.bad == [bad.meta["_error"]]
    strict = ParquetDataset(folder / "t.parquet", on_bad_sample="error")
    with pytest.raises(DataError, match=r"t.parquet:1: corrupt image: .*on_bad_sample=error stops here"):
        strict[1]


def test_bad_rows_found_when_read(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "x.png"
    outside.write_bytes(png((0, 0, 0)))
    write(folder / "t.parquet", {"question": [None, "<image><image>\nq", "<image>\nq", "<image>\nq"],
                                 "answer": ["a", "b", "c", "d"],
                                 "images": [[], ["img/a.png"], ["img/zzz.png"], [str(outside)]]})  # fmt: skip
    ds = ParquetDataset(folder / "t.parquet")
    kinds = [ds[i].meta["_error"].split(": ")[1] for i in range(4)]
    assert kinds == ["missing field 'question'", "placeholder count", "missing image", "image outside the data folder"]
    assert ParquetDataset(folder / "t.parquet", allow_outside_root=True)[3].image_paths == [str(outside.resolve())]


def test_start_up_reads_footers_only(folder, monkeypatch):
    write(folder / "t.parquet", {"question": [f"q{i}" for i in range(100)], "answer": ["a"] * 100}, row_group_size=10)
    reads = []
    for name in ("read_row_group", "read_row_groups", "read", "iter_batches"):
        real = getattr(pq.ParquetFile, name)
        counted = lambda self, *a, _n=name, _r=real, **k: reads.append(_n) or _r(self, *a, **k)  # noqa: E731
        monkeypatch.setattr(pq.ParquetFile, name, counted)
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: reads.append("read_table"))
    ds = ParquetDataset(folder / "t.parquet")
    assert reads == [] and len(ds) == 100 and len(ds.row_groups) == 10
    assert [ds[i].question for i in (37, 38, 31)] == ["q37", "q38", "q31"] and reads == ["read_row_group"]  # cached
    assert ds.locate(99) == (9, 9) and ds.where("t-37") == f"{folder / 't.parquet'}:37"


BOUNDS = [7, 10, 20, 21, 30, 38, 45, 50, 61, 64, 70]  # 11 row groups of uneven sizes (cumulative ends), 70 rows


def group_of(i: int) -> int:
    import bisect

    return bisect.bisect_right(BOUNDS, i)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_block_shuffle_resumes_at_any_consumed_count(world):
    from r1v.data.sampler import BlockShuffleSampler

    for rank in range(world):
        full = BlockShuffleSampler(BOUNDS, window=3, seed=5, rank=rank, world_size=world)
        full.set_epoch(2)
        uninterrupted = list(full)
        assert len(uninterrupted) == len(full)
        for consumed in range(len(uninterrupted) + 1):
            resumed = BlockShuffleSampler(BOUNDS, window=3, seed=5, rank=rank, world_size=world)
            resumed.set_epoch(2)
            resumed.resume_at(2, consumed)
            got = list(resumed)
            assert got == uninterrupted[consumed:]
            assert [type(i) for i in got] == [type(i) for i in uninterrupted[consumed:]]  # a pad stays a pad


def test_block_shuffle_covers_every_row_once_across_two_ranks():
    from r1v.data.sampler import BlockShuffleSampler, PadIndex

    for epoch in (0, 1):
        shares = []
        for rank in (0, 1):
            s = BlockShuffleSampler(BOUNDS, window=4, seed=1, rank=rank, world_size=2)
            s.set_epoch(epoch)
            shares.append(list(s))
        assert len(shares[0]) == len(shares[1]) == 35
        real = [i for share in shares for i in share if not isinstance(i, PadIndex)]
        assert sorted(real) == list(range(70))
    orders = [BlockShuffleSampler(BOUNDS, window=4, seed=1).order(e) for e in (0, 1)]
    assert orders[0] != orders[1] and orders[0] == BlockShuffleSampler(BOUNDS, window=4, seed=1).order(0)
    odd = [BlockShuffleSampler(BOUNDS[:-2], window=4, seed=1, rank=r, world_size=2).order(0) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 31 and isinstance(odd[1][0], PadIndex)  # 61 rows: rank 1's share is short
    assert not isinstance(odd[0][0], PadIndex) and sorted({*odd[0], *odd[1][1:]}) == list(range(61))


def test_block_shuffle_stays_within_a_window_of_row_groups():
    """A reader caching `window` row groups (LRU) reads each group once per epoch on one rank, and at most
    one group more than its share's on each of two ranks (the share may start mid-window)."""
    from collections import OrderedDict

    from r1v.data.sampler import BlockShuffleSampler

    def reads(order: list[int], cache: int) -> int:
        lru, n = OrderedDict(), 0
        for i in order:
            g = group_of(int(i))
            if g not in lru:
                n += 1
                lru[g] = True
                if len(lru) > cache:
                    lru.popitem(last=False)
            lru.move_to_end(g)
        return n

    for seed in range(5):
        order = BlockShuffleSampler(BOUNDS, window=3, seed=seed).order(seed)
        assert reads(order, 3) == len(BOUNDS)
        assert reads(order, 3) < reads(torch_uniform(seed), 3)  # what the uniform shuffle would read
        for rank in (0, 1):
            share = BlockShuffleSampler(BOUNDS, window=3, seed=seed, rank=rank, world_size=2).order(seed)
            assert reads(share, 3) <= len({group_of(int(i)) for i in share}) + 1


def torch_uniform(seed: int) -> list[int]:
    from r1v.data.sampler import ResumableSampler

    return ResumableSampler(70, seed=seed).order(seed)


def test_the_training_loader_block_shuffles_parquet_data(folder):
    from r1v.data.sampler import BlockShuffleSampler, PadAware, ResumableSampler
    from r1v.runtime.steps import DataPosition

    write(folder / "t.parquet", {"question": [f"q{i}" for i in range(40)], "answer": ["a"] * 40}, row_group_size=8)
    ds = ParquetDataset(folder / "t.parquet", cache_row_groups=2)
    loader = DataPosition(batch_size=4, seed=0).loader(PadAware(ds), list, world=1, rank=0)
    assert isinstance(loader.sampler, BlockShuffleSampler) and loader.sampler.window == 2
    assert sorted(s.question for b in loader for s in b) == sorted(f"q{i}" for i in range(40))
    assert type(DataPosition(batch_size=4, seed=0).loader(list(range(5)), list, 1, 0).sampler) is ResumableSampler


def test_resumed_loader_with_two_workers_continues_across_a_shard_boundary(folder):
    """Two files (a shard boundary), two loader workers: a loader resumed at a consumed count yields exactly the
    rest of the uninterrupted run's samples, in order."""
    from r1v.data.sampler import PadAware
    from r1v.runtime.steps import DataPosition

    for k in range(2):
        write(folder / f"s-{k}.parquet", {"question": [f"q{k}-{i}" for i in range(15)], "answer": ["a"] * 15},
              row_group_size=4)  # fmt: skip
    ds = PadAware(ParquetDataset(str(folder / "s-*.parquet"), cache_row_groups=2))

    def run(consumed: int | None) -> list[str]:
        position = DataPosition(batch_size=3, seed=7)
        position.resume_at = None if consumed is None else (0, consumed)
        loader = position.loader(ds, list, world=1, rank=0, num_workers=2)
        return [s.question for batch in loader for s in batch]

    full = run(None)
    assert sorted(full) == sorted(f"q{k}-{i}" for k in range(2) for i in range(15))
    assert run(12) == full[12:]


def test_data_check_names_parquet_rows_by_file_and_row(folder, compose):
    from r1v.data.check import check

    columns = {"question": ["<image>\nq", "<image>\nr", "s " * 400], "answer": ["a", "b", "c"],
               "images": [png((1, 1, 1)), b"junk", None]}  # fmt: skip
    path = write(folder / "t.parquet", columns)
    (report,) = check(compose("data=parquet", f"data.train={path}"), max_tokens=300)
    assert report.rows == 3 and [line.split(": ")[:2] for line in report.bad] == \
        [[f"{path}:1", "corrupt image"], [f"{path}:2", "too long"]]  # fmt: skip

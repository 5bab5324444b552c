"""data=hf_disk: a save_to_disk folder (written here by hand with pyarrow, as ``datasets`` lays it out) reads into
the same Samples as JSONL, lazily by record batch; DatasetDict splits; bad folders one line each."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from r1v.core.errors import DataError
from r1v.data.hf_disk import HfDiskDataset, val_folder
from tests.unit.test_parquet_data import ROWS, jsonl, png, same


@pytest.fixture
def folder(tmp_path: Path) -> Path:  # the Parquet tests' images, which ROWS name
    (tmp_path / "img").mkdir()
    for name, color in (("a.png", (255, 0, 0)), ("b.png", (0, 255, 0))):
        (tmp_path / "img" / name).write_bytes(png(color))
    return tmp_path


def save_to_disk(path: Path, columns: dict, shards: int = 1, batch: int = 1) -> Path:
    """A Dataset folder as ``Dataset.save_to_disk`` writes it: stream shards of ``batch``-row record batches."""
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    per = -(-table.num_rows // shards)
    names = []
    for k in range(shards):
        names.append(f"data-{k:05d}-of-{shards:05d}.arrow")
        with pa.OSFile(str(path / names[-1]), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table.slice(k * per, per), max_chunksize=batch)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "0", "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}  # fmt: skip
    (path / "state.json").write_text(json.dumps(state))
    (path / "dataset_info.json").write_text(json.dumps({"features": {}, "citation": "", "description": ""}))
    return path


def dataset_dict(path: Path, splits: dict[str, dict]) -> Path:
    for name, columns in splits.items():
        save_to_disk(path / name, columns)
    (path / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return path


def columns_of(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_matches_jsonl_across_shards_and_record_batches(folder):
    expected = jsonl(folder, ROWS)
    ds = HfDiskDataset(save_to_disk(folder / "ds", columns_of(ROWS), shards=2), image_root=folder)
    assert len(ds) == 3 and ds.row_groups == [1, 2, 3]
    for i in range(3):
        same(ds[i], expected[i])
    assert ds.where("r2") == f"{folder / 'ds' / 'data-00001-of-00002.arrow'}:0"


def test_start_up_reads_headers_only_and_bytes_images(folder, monkeypatch):
    n = 50
    hf_images = [{"bytes": png((i, 0, 0)), "path": None} for i in range(n)]
    path = save_to_disk(folder / "ds", {"question": [f"<image>\nq{i}" for i in range(n)], "answer": ["a"] * n,
                                        "image": hf_images}, batch=10)  # fmt: skip
    reads = []
    real = HfDiskDataset._read  # the one place a record batch's rows become Python objects
    monkeypatch.setattr(HfDiskDataset, "_read", lambda self, *a: reads.append(1) or real(self, *a))
    for name in ("open_stream", "open_file", "RecordBatchStreamReader", "RecordBatchFileReader"):
        monkeypatch.setattr(pa.ipc, name, lambda *a, _n=name, **k: reads.append(_n))
    ds = HfDiskDataset(path)
    assert reads == [] and len(ds) == n and ds.row_groups == [10, 20, 30, 40, 50]
    s = ds[37]
    assert s.question == "<image>\nq37" and s.image_paths == [] and s.images[0].getpixel((0, 0)) == (37, 0, 0)
    assert [ds[i].question for i in (38, 31)] == ["<image>\nq38", "<image>\nq31"] and reads == [1]  # cached
    assert ds.where("data-00000-of-00001-37") == f"{path / 'data-00000-of-00001.arrow'}:37"


def test_row_counts_at_start_match_decoded_batches(tmp_path):
    path = save_to_disk(tmp_path / "ds", {"question": [f"q{i}" for i in range(23)], "answer": ["a"] * 23}, batch=5)
    with pa.memory_map(str(path / "data-00000-of-00001.arrow")) as mm:
        decoded = [b.num_rows for b in pa.ipc.open_stream(mm)]
    assert decoded == [5, 5, 5, 5, 3] and HfDiskDataset(path).row_groups == [5, 10, 15, 20, 23]


def test_dataset_dict_splits_and_validation(folder, compose, registry):
    from r1v.data.build import build_datasets

    root = dataset_dict(folder / "dd", {"train": columns_of(ROWS[:2]), "test": columns_of(ROWS[2:])})
    train, val = build_datasets(compose("data=hf_disk", f"data.train={root}", f"data.image_root={folder}"), registry)
    assert [train[i].id for i in range(len(train))] == ["r0", "r1"] and [val[0].id] == ["r2"]  # test: null val
    assert val_folder(str(root), "train") == root / "train"  # a split name
    assert val_folder(str(root), str(root / "test")) == root / "test"  # a folder
    assert val_folder(str(root / "train"), None) is None  # a plain Dataset: no split to take
    with pytest.raises(DataError, match=r"^data.train_split: .*dd has no split 'trian' \(splits: train, test\) — "
                                        r"did you mean 'train'\?$"):  # fmt: skip
        HfDiskDataset(root, split="trian")
    with pytest.raises(DataError, match=r"^data.val: 'valid' is neither a folder nor a split of .*dd \(splits: "
                                        r"train, test\)"):  # fmt: skip
        val_folder(str(root), "valid")


def test_not_a_save_to_disk_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(
        DataError,
        match=r"^data.train: .*x is not a datasets save_to_disk folder: expected "
        r"state.json \(a Dataset\) or dataset_dict.json \(a DatasetDict\) in it$",
    ):
        HfDiskDataset(tmp_path / "x")
    with pytest.raises(DataError, match=r"^data.train: .*nope is not a folder"):
        HfDiskDataset(tmp_path / "nope")
    path = save_to_disk(tmp_path / "ds", {"question": ["q"], "answer": ["a"]})
    (path / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(DataError, match=r"state.json: names .*data-00000-of-00001.arrow, which does not exist$"):
        HfDiskDataset(path)
    (path / "data-00000-of-00001.arrow").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match=r"data-00000-of-00001.arrow: not an Arrow IPC stream"):
        HfDiskDataset(path)


def test_mapping_errors_as_parquet(tmp_path):
    path = save_to_disk(tmp_path / "ds", {"questoin": ["q"], "answer": ["a"]})
    with pytest.raises(DataError, match=r"no column 'question' \(data.columns.question; preset r1v\); columns: "
                                        r"questoin, answer — did you mean 'questoin'\?"):  # fmt: skip
        HfDiskDataset(path)
    ds = HfDiskDataset(path, columns={"question": "questoin"})
    assert (ds[0].question, ds[0].answer) == ("q", "a")
    with pytest.raises(DataError, match=r"^data.columns: unknown field 'anwser'"):
        HfDiskDataset(path, columns={"anwser": "answer"})
    path = save_to_disk(tmp_path / "t", {"question": [1.5], "answer": ["a"]})
    with pytest.raises(DataError, match=r"column 'question' \(data.columns.question\) has type double"):
        HfDiskDataset(path)


def test_resumed_loader_continues_through_the_block_shuffle(tmp_path):
    from r1v.data.sampler import BlockShuffleSampler, PadAware
    from r1v.runtime.steps import DataPosition

    path = save_to_disk(tmp_path / "ds", {"question": [f"q{i}" for i in range(30)], "answer": ["a"] * 30},
                        shards=2, batch=4)  # fmt: skip
    ds = PadAware(HfDiskDataset(path, cache_row_groups=2))

    def run(consumed: int | None) -> list[str]:
        position = DataPosition(batch_size=3, seed=7)
        position.resume_at = None if consumed is None else (0, consumed)
        loader = position.loader(ds, list, world=1, rank=0)
        assert isinstance(loader.sampler, BlockShuffleSampler) and loader.sampler.window == 2
        return [s.question for batch in loader for s in batch]

    full = run(None)
    assert sorted(full) == sorted(f"q{i}" for i in range(30))
    assert run(12) == full[12:]


def test_a_folder_written_by_the_datasets_library_reads_in_its_order(compose, registry):
    """tests/unit/assets/hf_disk_llava was written by ``datasets`` 5.2.0's own ``save_to_disk`` (make.py beside
    it): a DatasetDict in the LLaVA layout, images as the ``Image`` feature's {bytes, path} struct, the train split
    shuffled and cut by ``select`` (an indices mapping, which save_to_disk writes out) over two shards."""
    from r1v.data.build import build_datasets

    root = Path(__file__).parent / "assets" / "hf_disk_llava"
    expected = json.loads((root / "expected_ids.json").read_text())
    train, val = build_datasets(compose("data=hf_disk", f"data.train={root}", "data.preset=llava",
                                        "data.on_bad_sample=error"), registry)  # fmt: skip
    assert [train[i].id for i in range(len(train))] == expected["train"]
    assert [val[i].id for i in range(len(val))] == expected["validation"]
    first = train[0]
    n = int(first.id[1:])
    assert first.answer == f"<think>count</think>{n % 5}" and f"picture {n}?" in first.question
    assert len(first.images) == 1 and first.images[0].size == (8, 8)

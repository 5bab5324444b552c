"""Kill at a named point, resume exactly, on the data side: a process reading Parquet shards (or a mixture of a
Parquet and a JSONL source) with two loader workers dies by ``R1V_FAULT_INJECT=after_step:<k>`` in its second epoch,
just before the stream crosses into another shard; resumed from its last checkpoint, it trains exactly the rows an
uninterrupted run trains after step k: none twice, none left out (tests/unit/kill_stream.py). Before the fix in
``DataPosition.loader`` the resumed epoch's workers prefetched epoch 0's order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SCRIPT = Path(__file__).with_name("kill_stream.py")
ROOT = Path(__file__).resolve().parents[2]


def stream(data: dict, folder: Path, tag: str, kill: int | None = None) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"),
                                                        os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    env.pop("R1V_FAULT_INJECT", None)
    if kill is not None:
        env["R1V_FAULT_INJECT"] = f"after_step:{kill}"
    ids = folder / f"{tag}.ids"
    # stderr to a file, not a pipe: the killed process's loader workers hold a pipe open until they notice (5 s)
    with (folder / f"{tag}.err").open("w") as err:
        proc = subprocess.run([sys.executable, str(SCRIPT), json.dumps(data), str(folder / f"{tag}.state"),
                               str(ids)], env=env, stdout=err, stderr=err, timeout=120)  # fmt: skip
    assert proc.returncode in (0, 137), (folder / f"{tag}.err").read_text()[-2000:]
    return proc.returncode, ids.read_text().split() if ids.is_file() else []


def uninterrupted(data: dict) -> list[str]:
    """The ids an uninterrupted run trains on (in this process; the same loader, two workers)."""
    from r1v.core.registry import get_registry
    from r1v.data.build import build_datasets
    from r1v.data.sampler import PadAware
    from r1v.runtime.steps import DataPosition

    train, _ = build_datasets({"data": data, "stage": {}}, get_registry())
    loader = DataPosition(batch_size=3, seed=7).loader(PadAware(train), list, world=1, rank=0, num_workers=2)
    ids = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        ids += [s.id for batch in loader for s in batch]
    return ids


def shard(sample_id: str) -> str:
    return sample_id.rsplit("-", 1)[0]  # '<file stem>-<row>' for rows without an id column


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    for k in range(3):
        pq.write_table(pa.table({"question": [f"q{k}-{i}" for i in range(12)], "answer": ["a"] * 12}),
                       tmp_path / f"s{k}.parquet", row_group_size=4)  # fmt: skip
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"question": f"j{i}", "answer": "b"}) + "\n"
                                              for i in range(5)))  # fmt: skip
    return tmp_path


@pytest.mark.parametrize("kind", ["parquet", "mixture"])
def test_killed_just_before_a_shard_boundary_resumes_exactly(shards, kind):
    parquet = {"name": "parquet", "train": str(shards / "s*.parquet"), "cache_row_groups": 1}
    if kind == "parquet":
        data = {**parquet, "on_bad_sample": "skip"}
    else:
        data = {"name": "mixture", "sources": {"general": parquet, "reasoning": {"name": "jsonl",
                "train": str(shards / "r.jsonl")}}, "mixture": [{"source": "general", "weight": 0.7},
                {"source": "reasoning", "weight": 0.3}], "epoch_samples": 36, "on_bad_sample": "skip"}  # fmt: skip
    full = uninterrupted(data)
    assert len(full) == 72
    batches = [full[i : i + 3] for i in range(0, len(full), 3)]
    # the kill point, in epoch 1 (steps 13-24): the last step before a batch that reads a Parquet shard none of
    # that epoch's earlier batches read
    seen, kill = {shard(i) for i in batches[12]}, None
    for k, batch in enumerate(batches[13:], 13):
        new = {shard(i) for i in batch} - seen
        if any(n.startswith("s") for n in new) and k >= 14:
            kill = k
            break
        seen |= new
    assert kill is not None
    rc, before = stream(data, shards, "run", kill=kill)
    assert rc == 137 and before == full[: 3 * kill]
    rc, trained = stream(data, shards, "run")  # the ids file holds both processes' batches
    assert rc == 0 and trained == full

"""``python -m r1v data check`` on Parquet shards: one verdict per shard, cached by path, size, mtime and check
settings (a second run re-checks nothing, a touched shard only itself), in parallel over a process pool; the bad
rows reported are the same either way."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from r1v.data.check import check


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Four shards of five rows; shard 1 has an undecodable image, shard 3 a row too long for 300 tokens."""
    good = png()
    for k in range(4):
        images = [good] * 5
        questions = [f"<image>\nq{k}-{i}" for i in range(5)]
        if k == 1:
            images[2] = b"junk"
        if k == 3:
            questions[4] = "<image>\n" + "s " * 400
        pq.write_table(pa.table({"question": questions, "answer": ["a"] * 5, "images": images}),
                       tmp_path / f"part-{k}.parquet", row_group_size=2)  # fmt: skip
    return tmp_path


def run(compose, folder: Path, **kwargs):
    (report,) = check(compose("data=parquet", f"data.train={folder}"), max_tokens=kwargs.pop("max_tokens", 300),
                      **kwargs)  # fmt: skip
    return report


def test_second_run_rechecks_nothing_and_a_touched_shard_only_itself(shards, compose):
    first = run(compose, shards)
    assert (first.shards, first.checked, first.rows) == (4, 4, 20)
    expected = [[f"{shards / 'part-1.parquet'}:2", "corrupt image"], [f"{shards / 'part-3.parquet'}:4", "too long"]]
    assert [line.split(": ")[:2] for line in first.bad] == expected
    assert sorted(p.name for p in (shards / ".r1v_check").iterdir()) == [f"part-{k}.parquet.json" for k in range(4)]
    again = run(compose, shards)
    assert (again.checked, again.rows, again.bad, again.lines()[1:]) == (0, 20, first.bad, first.lines()[1:])
    assert "(4 shards: 0 checked, 4 cached)" in again.lines()[0]
    shard = shards / "part-3.parquet"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # touched: same bytes
    touched = run(compose, shards)
    assert (touched.checked, touched.bad) == (1, first.bad)
    assert run(compose, shards, max_tokens=10_000).checked == 4  # other check settings: other verdicts
    assert run(compose, shards, max_tokens=10_000).bad == first.bad[:1]
    assert run(compose, shards, use_cache=False).checked == 4


def test_a_changed_shard_gets_a_new_verdict(shards, compose):
    run(compose, shards)
    pq.write_table(pa.table({"question": ["<image>\nq"], "answer": ["a"], "images": [b"bad"]}),
                   shards / "part-0.parquet")  # fmt: skip
    report = run(compose, shards)
    assert report.checked == 1 and report.rows == 16
    assert report.bad[0].startswith(f"{shards / 'part-0.parquet'}:0: corrupt image")


def test_a_read_only_data_folder_caches_in_the_user_cache(shards, compose, monkeypatch, tmp_path_factory):
    import r1v.data.check_shards as cs

    home = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.setattr(cs.os, "access", lambda path, mode: False)  # as a read-only folder (root may write anywhere)
    first = run(compose, shards)
    assert first.checked == 4 and not (shards / ".r1v_check").exists()
    assert len(list((home / "r1v" / "check").glob("*-part-*.parquet.json"))) == 4
    assert run(compose, shards).checked == 0


def test_parallel_check_reports_the_same_rows(shards, compose, monkeypatch):
    import r1v.data.check_shards as cs

    sequential = run(compose, shards, use_cache=False)
    monkeypatch.setattr(cs, "CHUNK_ROWS", 2)  # a shard of 5 rows in 3 pieces: shards are split over the workers too
    assert cs.chunks(range(5, 10), 2) == [(5, 7), (7, 9), (9, 10)]
    parallel = run(compose, shards, workers=2, use_cache=False)
    assert (parallel.checked, parallel.rows, parallel.bad) == (4, 20, sequential.bad)
    assert run(compose, shards, workers=2).checked == 0  # the workers' verdicts were cached


def test_a_mixture_is_checked_source_by_source(shards, compose):
    sources = f"{{web: {{name: parquet, train: '{shards}'}}, synth: {{name: synthetic, n_train: 3, n_val: 1}}}}"
    reports = check(compose("data=mixture", f"data.sources={sources}"), max_tokens=300)
    names = [f"web: {shards} (train)", "synth: synthetic (train)", "synth: synthetic (val)"]
    assert [r.source for r in reports] == names
    assert (reports[0].shards, len(reports[0].bad), reports[1].rows, reports[1].bad) == (4, 2, 3, [])

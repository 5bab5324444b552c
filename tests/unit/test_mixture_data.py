"""data=mixture: weighted draws over sources of any kind, deterministic per seed, exact resume (the per-source
counts in the checkpoint), sources that run out start a new pass, bad mixtures one line each."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1v.core.errors import DataError
from r1v.data.mixture import MixtureDataset, MixtureSampler


def mix(sizes: dict[str, int], weights: dict[str, float] | None, epoch_samples: int | None = None) -> MixtureDataset:
    return MixtureDataset({n: list(range(k)) for n, k in sizes.items()}, weights, epoch_samples)


def sources_of(ds: MixtureDataset, order: list[int]) -> list[str]:
    return [ds.names[ds.locate(i)[0]] for i in order]


def test_proportions_over_ten_thousand_draws_and_passes_without_repeats():
    ds = mix({"general": 300, "reasoning": 100}, {"general": 0.7, "reasoning": 0.3}, epoch_samples=10_000)
    order = list(MixtureSampler(ds, seed=3))
    assert len(order) == 10_000
    share = Counter(sources_of(ds, order))
    assert abs(share["general"] / 1e4 - 0.7) < 0.02 and abs(share["reasoning"] / 1e4 - 0.3) < 0.02  # 4 sigma
    for name in ds.names:  # each pass of a source visits every row once; the next pass is a new order
        rows = [ds.locate(i)[1] for i, s in zip(order, sources_of(ds, order), strict=True) if s == name]
        n = len(ds.sources[ds.names.index(name)])
        passes = [rows[k : k + n] for k in range(0, len(rows) - n + 1, n)]
        assert len(passes) >= 2 and all(sorted(p) == list(range(n)) for p in passes)
        assert passes[0] != passes[1]
    state = MixtureSampler(ds, seed=3).state_at(0, 10_000)
    assert state["samples"] == dict(share) and state["epochs"] == {n: share[n] // 300 if n == "general" else
                                                                    share[n] // 100 for n in share}  # fmt: skip


def test_same_seed_same_order_other_seed_other_order():
    ds = mix({"a": 50, "b": 20, "c": 5}, {"a": 1, "b": 1, "c": 2}, epoch_samples=500)
    first = list(MixtureSampler(ds, seed=11))
    assert first == list(MixtureSampler(ds, seed=11))
    assert first != list(MixtureSampler(ds, seed=12))
    later = MixtureSampler(ds, seed=11)
    later.set_epoch(1)
    assert list(later) != first  # the stream goes on: epoch 1 is its next stretch


@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_stream_yields_exactly_the_uninterrupted_sequence(world):
    """Kill at any consumed count of epochs 0 and 1 (sources pass their ends there): a fresh sampler given the
    checkpoint's (epoch, consumed) and mixture counts yields the rest of the uninterrupted run, on every rank; no
    (source, row, pass) twice over the ranks."""
    ds = mix({"general": 23, "reasoning": 7}, {"general": 0.7, "reasoning": 0.3}, epoch_samples=60)
    for rank in range(world):
        full = {}
        for epoch in (0, 1):
            s = MixtureSampler(ds, seed=5, rank=rank, world_size=world)
            s.set_epoch(epoch)
            full[epoch] = list(s)
        for epoch in (0, 1):
            for consumed in range(0, len(full[epoch]) + 1, 3):
                state = MixtureSampler(ds, seed=5, rank=rank, world_size=world).state_at(epoch, consumed)
                resumed = MixtureSampler(ds, seed=5, rank=rank, world_size=world)
                resumed.restore(state)
                resumed.resume_at(epoch, consumed)
                resumed.set_epoch(epoch)
                assert list(resumed) == full[epoch][consumed:]
                if epoch == 0:  # and the next epoch after it still follows on
                    resumed.set_epoch(1)
                    assert list(resumed) == full[1]
    together = []
    for rank in range(world):
        s = MixtureSampler(ds, seed=5, rank=rank, world_size=world)
        together += [(ds.locate(i), k) for k, i in enumerate(s)]
    seen = Counter(sources_of(ds, [ds.offsets[s] + j for (s, j), _ in together]))
    assert sum(seen.values()) == 60 and max(Counter(loc for loc, _ in together).values()) <= 3  # 60 draws, 30 rows


def test_checkpoint_counts_carry_a_source_stream_over_a_changed_mixture():
    """The checkpoint's per-source counts decide where each source's stream goes on: with other weights after the
    resume, a source still continues its pass instead of starting over (no row twice within the pass)."""
    before = mix({"a": 10, "b": 10}, {"a": 1, "b": 1}, epoch_samples=12)
    state = MixtureSampler(before, seed=0).state_at(0, 8)
    seen_a = [before.locate(i)[1] for i in list(MixtureSampler(before, seed=0))[:8] if before.locate(i)[0] == 0]
    after = mix({"a": 10, "b": 10}, {"a": 1, "b": 0.001}, epoch_samples=12)
    resumed = MixtureSampler(after, seed=0)
    resumed.restore(state)
    resumed.resume_at(0, 8)
    next_a = [after.locate(i)[1] for i in resumed if after.locate(i)[0] == 0]
    assert next_a and not set(next_a[: 10 - len(seen_a)]) & set(seen_a)


def png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def two_kinds(tmp_path: Path) -> dict:
    """A Parquet source of two shards (row groups of 4) and a JSONL source: the data.sources of a run."""
    for k in range(2):
        pq.write_table(pa.table({"question": [f"p{k}-{i}" for i in range(10)], "answer": ["a"] * 10}),
                       tmp_path / f"s-{k}.parquet", row_group_size=4)  # fmt: skip
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"question": f"j{i}", "answer": "b"}) + "\n"
                                              for i in range(6)))  # fmt: skip
    return {
        "general": {"name": "parquet", "train": str(tmp_path / "s-*.parquet"), "cache_row_groups": 2},
        "reasoning": {"name": "jsonl", "train": str(tmp_path / "r.jsonl")},
    }


def hydra_value(v) -> str:
    """A value in Hydra's override grammar (bare keys, quoted strings)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(x)}" for k, x in v.items()) + "}"
    return f"'{v}'" if isinstance(v, str) else json.dumps(v)


def overrides(sources: dict, mixture: str = "[{source: general, weight: 0.7}, {source: reasoning, weight: 0.3}]"):
    return ["data=mixture", f"data.sources={hydra_value(sources)}", f"data.mixture={mixture}"]


def test_the_training_loader_resumes_a_mixture_from_its_checkpoint_with_two_workers(two_kinds, compose, registry):
    """Parquet and JSONL sources through the config, two loader workers: the checkpoint taken after some batches
    (DataPosition.state_dict, mixture counts included) resumes to exactly the rest of the uninterrupted stream."""
    from r1v.core.config import validate
    from r1v.data.build import build_datasets
    from r1v.data.sampler import PadAware
    from r1v.runtime.steps import DataPosition

    cfg = compose(*overrides(two_kinds), "data.epoch_samples=45")
    validate(cfg, registry)
    train, val = build_datasets(cfg, registry)
    assert val is None and len(train) == 26 and train.summary()["general"] == {"rows": 20, "weight": 0.7}
    ds = PadAware(train)

    def run(state: dict | None) -> list[str]:
        position = DataPosition(batch_size=3, seed=7)
        if state:
            position.load_state_dict(state)
        loader = position.loader(ds, list, world=1, rank=0, num_workers=2)
        return [s.question for batch in loader for s in batch]

    full = run(None)
    assert len(full) == 45 and {q[0] for q in full} == {"p", "j"}
    position = DataPosition(batch_size=3, seed=7)
    position.loader(ds, list, world=1, rank=0)
    position.batches_done = 5
    state = position.state_dict(epoch=0)
    assert state["mixture"]["samples"] == dict(Counter("general" if q[0] == "p" else "reasoning" for q in full[:15]))
    assert run(state) == full[15:]


def test_mixture_of_every_kind_names_bad_rows_by_source(tmp_path, compose, registry):
    from r1v.data.build import build_datasets

    (tmp_path / "r.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n{not json\n")
    sources = {"synth": {"name": "synthetic", "n_train": 8, "n_val": 2},
               "mine": {"name": "jsonl", "train": str(tmp_path / "r.jsonl")}}  # fmt: skip
    train, val = build_datasets(compose(*overrides(sources, "[]")), registry)
    assert train.mixture == {"synth": 8.0, "mine": 1.0} and len(val) == 2  # []: every source by its rows
    assert train.skipped == Counter({"invalid JSON": 1}) and train.bad[0].startswith(f"{tmp_path / 'r.jsonl'}:2")
    sample = train[8]
    assert sample.meta["_source"] == "mine" and train.where(sample.id) == f"mine: {tmp_path / 'r.jsonl'}:1"


@pytest.mark.parametrize(("mixture", "extra", "message"), [
    ("[{source: general, weight: 0}]", {}, "data.mixture[0].weight=0: must be a number > 0 (source 'general'"),
    ("[{source: general, weight: 1}, {source: reasoning, weight: -0.5}]", {},
     "data.mixture[1].weight=-0.5: must be a number > 0"),
    ("[{source: generl, weight: 1}]", {},
     "data.mixture[0].source: no source 'generl' (data.sources: general, reasoning) — did you mean 'general'?"),
    ("[]", {"general": {"name": "parquet", "train": "x", "on_bad_sample": "error"}},
     "data.sources.general.on_bad_sample: set it once for the whole mixture, as data.on_bad_sample"),
    ("[]", {"general": {"name": "parquett", "train": "x"}}, "data.sources.general: "),
    ("[]", {"general": {"name": "parquet", "trian": "x"}}, "has no option 'trian'"),
])  # fmt: skip
def test_bad_mixtures_are_one_line(two_kinds, compose, registry, mixture, extra, message):
    from r1v.data.build import build_datasets

    with pytest.raises(DataError) as e:
        build_datasets(compose(*overrides({**two_kinds, **extra}, mixture)), registry)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_no_sources_is_one_line(compose, registry):
    from r1v.data.build import build_datasets

    with pytest.raises(DataError, match=r"^data.sources: no sources \(name -> a data option"):
        build_datasets(compose("data=mixture"), registry)


def test_source_counts_go_to_run_json(tmp_path):
    from r1v.train import record_source_counts

    (tmp_path / "run.json").write_text(json.dumps({"data": {"train": {"rows": 26, "sources": {
        "general": {"rows": 20, "weight": 0.7}, "reasoning": {"rows": 6, "weight": 0.3}}}}}))  # fmt: skip
    counts = {"samples": {"general": 31, "reasoning": 14}, "epochs": {"general": 1, "reasoning": 2}}
    record_source_counts(tmp_path, counts)
    sources = json.loads((tmp_path / "run.json").read_text())["data"]["train"]["sources"]
    assert sources == {"general": {"rows": 20, "weight": 0.7, "samples": 31, "epochs": 1},
                       "reasoning": {"rows": 6, "weight": 0.3, "samples": 14, "epochs": 2}}  # fmt: skip


def test_the_stage_logs_draws_per_source_after_every_batch():
    from types import SimpleNamespace

    from r1v.runtime.steps import DataPosition
    from r1v.stages.base import LightningStage

    ds = mix({"general": 30, "reasoning": 10}, {"general": 0.7, "reasoning": 0.3})
    position = DataPosition(batch_size=4, seed=0)
    position.loader(ds, list, world=1, rank=0)
    position.batches_done = 3
    logged: dict = {}
    stage = SimpleNamespace(throughput=SimpleNamespace(stats=lambda device: {}), position=position, current_epoch=0,
                            device="cpu", log_dict=lambda d, batch_size: logged.update(d), global_step=0)  # fmt: skip
    LightningStage.on_train_batch_end(stage, None, None, 0)
    expected = position.sampler.state_at(0, 12)
    assert logged == {f"data/source_{n}_{what}": float(expected[what][n]) for n in ds.names
                      for what in ("samples", "epochs")}  # fmt: skip
    assert sum(expected["samples"].values()) == 12 and position.last_sources == expected

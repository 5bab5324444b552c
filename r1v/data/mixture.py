"""``data=mixture``: several data sources of any kind (jsonl, parquet, hf_disk, synthetic, a plugin's) drawn by weight.

Config::

    data=mixture
    data.sources='{general: {name: parquet, train: /d/gen-*.parquet}, reasoning: {name: jsonl, train: /d/r.jsonl}}'
    data.mixture='[{source: general, weight: 0.7}, {source: reasoning, weight: 0.3}]'

Each source is a data option written as a mapping (``name`` plus that option's knobs; ``loader``, ``max_tokens`` and
``on_bad_sample`` are the mixture's, one for the run). Sampling: position ``p`` of the mixture's one endless stream
(all epochs and ranks together) draws its source from a seeded generator per block of :data:`BLOCK` positions, with
probability ``weight / sum(weights)``; the ``n``-th draw of source ``s`` is position ``n`` of ``s``'s own shuffled
stream: pass ``n // len(s)`` of ``s`` in the order its own training sampler gives (a block shuffle for Parquet),
seeded by the run seed and the source's name. So a source that runs out starts over with a new order (its next
pass: a new epoch seed), counted in ``epochs``; it is never exhausted, and the weights hold over the whole run.

A training epoch is ``epoch_samples`` positions (default: the sources' rows together); rank ``r`` of ``W`` takes
the positions ``p ≡ r (mod W)``, so ranks stay in lock-step without pads. Everything is a function of (seed,
position) and the per-source counts at the epoch's start, so a resume at the checkpoint's (epoch, consumed) yields
exactly the uninterrupted sequence; the checkpoint also holds each source's count there (:meth:`MixtureSampler.
state_at`), and a resume continues each source's stream from those counts.

Each sample carries its source's name in ``meta["_source"]`` (rewards see it in ``extra``). Validation: every
source's validation split once, in order (sources without one add nothing).
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from r1v.core.errors import DataError
from r1v.core.registry import did_you_mean
from r1v.data.sampler import train_sampler

BLOCK = 4096  # positions drawn per generator call: O(1) access to any position's source
RESERVED = ("loader", "max_tokens", "on_bad_sample")  # the mixture's, one for the run (the collator reads them)
MAX_WHERE = 1 << 16


def weights_of(sources: Mapping[str, Any], mixture: list[Any] | None) -> dict[str, float]:
    """Source name -> weight, checked (one line each): every named source exists, every weight is > 0, no source
    twice. An empty mixture: every source, weighted by its rows (``sources`` maps names to their sizes then)."""
    if not mixture:
        return {name: float(len(ds)) if hasattr(ds, "__len__") else 1.0 for name, ds in sources.items()}
    out: dict[str, float] = {}
    for k, item in enumerate(mixture):
        if not isinstance(item, Mapping) or "source" not in item:
            raise DataError(f"data.mixture[{k}]: {item!r} is not a {{source: <name>, weight: <number>}} mapping")
        name, weight = str(item["source"]), item.get("weight", 1.0)
        if name not in sources:
            raise DataError(f"data.mixture[{k}].source: no source '{name}' (data.sources: {', '.join(sources)})"
                            f"{did_you_mean(name, list(sources))}")  # fmt: skip
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            raise DataError(f"data.mixture[{k}].weight={weight!r}: must be a number > 0 (source '{name}'; leave a "
                            "source out of data.mixture to not draw from it)")  # fmt: skip
        if name in out:
            raise DataError(f"data.mixture[{k}].source: '{name}' is listed twice")
        out[name] = float(weight)
    return out


class MixtureDataset(Dataset):
    """The sources' rows side by side (flat index = the source's offset + its own index); ``mixture`` holds the
    weights the training sampler draws by (:class:`MixtureSampler`). A validation mixture is the same without
    weights: every source's validation rows once, in order."""

    def __init__(self, sources: Mapping[str, Dataset], weights: Mapping[str, float] | None = None,
                 epoch_samples: int | None = None) -> None:  # fmt: skip
        if not sources:
            raise DataError("data.sources: no sources (name -> a data option, e.g. {general: {name: parquet, "
                            "train: /d/*.parquet}})")  # fmt: skip
        self.names = list(sources)
        self.sources = [sources[n] for n in self.names]
        self.offsets = np.cumsum([0, *[len(ds) for ds in self.sources]]).tolist()
        self.mixture = dict(weights or {})
        if epoch_samples is not None and epoch_samples < 1:
            raise DataError(f"data.epoch_samples: {epoch_samples} is not allowed (1 or more, or null)")
        self.epoch_samples = int(epoch_samples or self.offsets[-1])
        self.path = "mixture of " + ", ".join(self.names)  # how reports name the data set
        self._where: OrderedDict[str, int] = OrderedDict()  # id -> source of recently read samples

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, i: int) -> tuple[int, int]:
        """(source number, index in that source) of flat index ``i``."""
        s = bisect.bisect_right(self.offsets, i) - 1
        return s, i - self.offsets[s]

    def __getitem__(self, i: int) -> Any:
        s, j = self.locate(int(i))
        sample = self.sources[s][j]
        meta = getattr(sample, "meta", None)
        if isinstance(meta, dict):  # its source (rewards see it in extra); a copy, as JSONL rows share their meta
            sample.meta = {**meta, "_source": self.names[s]}
        sid = str(getattr(sample, "id", i))
        self._where[sid] = s
        self._where.move_to_end(sid)
        while len(self._where) > MAX_WHERE:
            self._where.popitem(last=False)
        return sample

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_where": OrderedDict()}

    def make_sampler(self, seed: int, rank: int = 0, world_size: int = 1) -> MixtureSampler:
        """The training order (:func:`r1v.data.sampler.train_sampler` asks the data set for it)."""
        return MixtureSampler(self, seed, rank, world_size)

    def where(self, sample_id: str) -> str:
        """The source's own name for a sample it read (``file:row``), prefixed with the source's name."""
        s = self._where.get(sample_id)
        if s is None:
            return f"{self.path} (id {sample_id})"
        inner = getattr(self.sources[s], "where", None)
        return f"{self.names[s]}: {inner(sample_id) if callable(inner) else sample_id}"

    @property
    def skipped(self) -> Counter[str]:
        return sum((Counter(getattr(ds, "skipped", {}) or {}) for ds in self.sources), Counter())

    @property
    def bad(self) -> list[str]:
        return [line for ds in self.sources for line in getattr(ds, "bad", [])]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per source: its rows and share of draws (run.json's ``data.train.sources``)."""
        total = sum(self.mixture.values()) or 1.0
        return {n: {"rows": len(ds), "weight": round(self.mixture.get(n, 0.0) / total, 6)}
                for n, ds in zip(self.names, self.sources, strict=True)}  # fmt: skip


class MixtureSampler(Sampler[int]):
    """This rank's positions of the mixture stream for an epoch, as flat indices of a :class:`MixtureDataset`
    (see the module docstring for the stream). ``set_epoch`` / ``resume_at`` as the other training samplers."""

    def __init__(self, ds: MixtureDataset, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.ds, self.seed, self.rank, self.world = ds, int(seed), rank, world_size
        self.drawn = [n for n in ds.names if n in ds.mixture]  # sources that are drawn, in ds order
        w = np.array([ds.mixture[n] for n in self.drawn], dtype=np.float64)
        self.cdf = np.cumsum(w / w.sum())
        self.cdf[-1] = 1.0
        self.index = [ds.names.index(n) for n in self.drawn]  # drawn number -> source number in ds
        # each source's own stream: its training order (block shuffle for row groups), seeded by run seed and name
        self.streams = [train_sampler(ds.sources[s], seed=zlib.crc32(f"{self.seed}/{ds.names[s]}".encode()),
                                      rank=0, world_size=1) for s in self.index]  # fmt: skip
        self._orders: dict[int, tuple[int, list[int]]] = {}  # stream -> (pass, its order) for samplers without index_at
        self.epoch = 0
        self._resume: tuple[int, int] | None = None
        self._anchor: tuple[int, np.ndarray] = (0, np.zeros(len(self.drawn), dtype=np.int64))
        self._memo: tuple[int, np.ndarray] = self._anchor
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()

    # -- the stream --------------------------------------------------------------------------------
    def _block(self, b: int) -> np.ndarray:
        """The drawn source (its number in ``self.drawn``) of each position of block ``b``."""
        if b not in self._blocks:
            u = np.random.default_rng([self.seed % 2**63, 0x6D6978, b]).random(BLOCK)
            self._blocks[b] = np.searchsorted(self.cdf, u, side="right").astype(np.int64)
            while len(self._blocks) > 4:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(b)
        return self._blocks[b]

    def counts_at(self, p: int) -> np.ndarray:
        """Draws of each source before stream position ``p`` (from the checkpoint's counts when resumed)."""
        start, counts = self._memo if self._memo[0] <= p else self._anchor
        if start > p:  # before the checkpoint's position: replay from the stream's start
            start, counts = 0, np.zeros(len(self.drawn), dtype=np.int64)
        counts = counts.copy()
        while start < p:
            b, off = divmod(start, BLOCK)
            end = min(p, (b + 1) * BLOCK)
            counts += np.bincount(self._block(b)[off : off + end - start], minlength=len(self.drawn))
            start = end
        self._memo = (p, counts)
        return counts.copy()

    def source_index(self, k: int, n: int) -> int:
        """Flat index of the ``n``-th draw of drawn source ``k``: pass ``n // rows`` of its own order."""
        s = self.index[k]
        rows = len(self.ds.sources[s])
        epoch, pos = divmod(int(n), rows)
        stream = self.streams[k]
        if hasattr(stream, "index_at"):
            j = stream.index_at(epoch, pos)
        else:
            if self._orders.get(k, (None,))[0] != epoch:
                self._orders[k] = (epoch, stream.order(epoch))
            j = self._orders[k][1][pos]
        return self.ds.offsets[s] + int(j)

    def position(self, epoch: int, consumed: int) -> int:
        """The stream position after this rank consumed ``consumed`` of ``epoch`` (all ranks in lock-step)."""
        return (epoch * len(self) + min(max(consumed, 0), len(self))) * self.world

    # -- the Sampler contract ----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, consumed: int) -> None:
        self._resume = (epoch, consumed)

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Continue each source's stream from a checkpoint's counts (:meth:`state_at`) at its position."""
        if not state or "position" not in state:
            return
        samples = state.get("samples") or {}
        counts = np.array([int(samples.get(n, 0)) for n in self.drawn], dtype=np.int64)
        self._anchor = self._memo = (int(state["position"]), counts)

    def state_at(self, epoch: int, consumed: int) -> dict[str, Any]:
        """What the checkpoint keeps: the stream position and, per source, draws so far and passes started."""
        p = self.position(epoch, consumed)
        counts = self.counts_at(p)
        rows = [len(self.ds.sources[s]) for s in self.index]
        return {"position": p, "samples": {n: int(c) for n, c in zip(self.drawn, counts, strict=True)},
                "epochs": {n: int(c // r) for n, c, r in zip(self.drawn, counts, rows, strict=True)}}  # fmt: skip

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume and self._resume[0] == self.epoch:
            skip, self._resume = self._resume[1], None
        start, end = self.position(self.epoch, skip), self.position(self.epoch + 1, 0)
        counts = self.counts_at(start)
        for p in range(start, end):
            k = int(self._block(p // BLOCK)[p % BLOCK])
            n = counts[k]
            counts[k] += 1
            if p % self.world == self.rank:
                yield self.source_index(k, n)

    def __len__(self) -> int:
        return -(-self.ds.epoch_samples // self.world)


def build_mixture(split: str, sources: Mapping[str, Any] | None, mixture: list[Any] | None, registry: Any,
                  shared: Mapping[str, Any], epoch_samples: int | None = None) -> MixtureDataset | None:  # fmt: skip
    """The sources of ``data.sources`` built by their registered dataset plugins (``shared``: the mixture's
    ``on_bad_sample`` / ``require_reasoning``, passed to sources that take them), weighted by ``data.mixture``."""
    from r1v.core.registry import RegistryError
    from r1v.core.values import check_knob_values

    if not isinstance(sources, Mapping) or not sources:
        raise DataError("data.sources: no sources (name -> a data option, e.g. {general: {name: parquet, "
                        "train: /d/*.parquet}})")  # fmt: skip
    weights = weights_of({n: None for n in sources}, mixture) if mixture else None
    built: dict[str, Any] = {}
    for name, node in sources.items():
        where = f"data.sources.{name}"
        if not isinstance(node, Mapping) or "name" not in node:
            raise DataError(f"{where}: must be a data option as a mapping with a name (known: "
                            f"{', '.join(n for n in registry.names('dataset') if n != 'mixture')})")  # fmt: skip
        if node["name"] == "mixture":
            raise DataError(f"{where}.name: a mixture cannot hold a mixture; list its sources here instead")
        taken = [k for k in RESERVED if k in node]
        if taken:
            raise DataError(f"{where}.{taken[0]}: set it once for the whole mixture, as data.{taken[0]}")
        try:
            entry = registry.get("dataset", str(node["name"]))
            knobs = {k: v for k, v in node.items() if k != "name"}
            entry.check_knobs(knobs, where=where, fixed=("split",))
        except RegistryError as e:
            raise DataError(f"{where}: {e}") from None
        check_knob_values(entry, knobs, where)
        knobs.update({k: v for k, v in shared.items() if k in entry.knobs() and k not in knobs})
        ds = entry.factory(split=split, **knobs)
        if ds is not None:
            built[name] = ds
    if split != "train":
        return MixtureDataset(built) if built else None
    weights = weights or weights_of(built, None)
    return MixtureDataset(built, weights, epoch_samples)

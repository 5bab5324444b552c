"""Batches from samples, made in the loader workers: a sample that cannot be encoded is skipped and counted,
never a dead run; a lock-step pad of the sampler (:func:`r1v.data.sampler.is_pad`) is dropped uncounted.

- :class:`Collator` — question + target completion rows for the next-token loss (padded, or packed);
- :class:`PairCollator` — chosen and rejected completions of one prompt (preference and reward-model stages).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from r1v.core.errors import ConfigError, DataError
from r1v.core.interfaces import Sample
from r1v.data.datasets import error_kind, too_long
from r1v.data.processor import Processor
from r1v.data.sampler import is_pad
from r1v.rl.grpo import completion_rows

log = logging.getLogger(__name__)


def _by_id(sample_id: str) -> str:
    return f"sample {sample_id}"


class Collator:
    """Encodes samples in the loader workers; a sample that cannot be encoded, or is longer than ``max_tokens``
    after image-token expansion (:func:`r1v.data.datasets.too_long`, the rule ``data check`` applies), is skipped
    and counted by kind, or under ``on_bad_sample="error"`` stops the run in one line naming ``where(id)``. A
    lock-step pad of the sampler (:func:`r1v.data.sampler.is_pad`) is dropped uncounted: it carries no loss.

    The length is checked here, on the one encoding the batch needs, not when rows are read: no row is tokenized
    twice, start-up stays flat however large the data, and every dataset (synthetic, JSONL, a plugin's) is covered.
    """

    def __init__(self, processor: Processor, target: str | None, padding_side: str = "right",
                 pack_max_tokens: int | None = None, attn: str = "sdpa", max_tokens: int | None = None,
                 on_bad_sample: str = "skip", where: Callable[[str], str] | None = None) -> None:  # fmt: skip
        self.processor, self.target, self.padding_side = processor, target, padding_side
        self.pack_max_tokens, self.attn = pack_max_tokens, attn  # packing: rows of up to this many tokens
        self.limit(max_tokens, on_bad_sample, where)

    def limit(self, max_tokens: int | None, on_bad_sample: str = "skip",
              where: Callable[[str], str] | None = None) -> None:  # fmt: skip
        """Set the length limit, the bad-sample policy and how a sample is named (``file:line`` for JSONL)."""
        self.max_tokens, self.on_bad_sample = max_tokens, on_bad_sample
        self.where = where or _by_id

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        encoded, rows = [], {}  # rows: the id of each skipped sample -> its kind of bad

        def bad(sample: Sample, message: str) -> None:
            if self.on_bad_sample == "error":
                raise DataError(f"{message}; data.on_bad_sample=error stops here (skip drops the row)")
            rows[str(sample.id)] = error_kind(message)
            log.warning("skipping %s", message)

        for s in samples:
            if is_pad(s):  # a repeat that only keeps the ranks in step (not a skipped sample)
                continue
            if s.meta.get("_error"):  # the dataset could not decode it
                bad(s, s.meta["_error"])
                continue
            try:
                e = self.processor.encode(s, self.target)
            except (ValueError, OSError) as exc:
                bad(s, f"{self.where(getattr(s, 'id', '?'))}: cannot encode: {exc}")
                continue
            length_error = self.max_tokens and too_long(self.where(s.id), len(e["input_ids"]), self.max_tokens)
            if length_error:
                bad(s, length_error)
                continue
            encoded.append(e)
        skipped, named = len(rows), {"skipped_rows": rows} if rows else {}
        if not encoded:
            return {"skipped": skipped, **named, "empty": True}
        if self.pack_max_tokens:
            batch = self.processor.pack(encoded, self.pack_max_tokens, self.attn)
        else:
            batch = self.processor.collate(encoded, self.padding_side)
        batch.update(skipped=skipped, **named)
        if torch.is_tensor(batch.get("labels")):  # the tokens the loss averages over (SFTStage.token_weight)
            batch["loss_tokens"] = int((batch["labels"][:, 1:] != -100).sum())
        return batch


class PairCollator:
    """Pairs → one batch of 2B rows (chosen rows first, then rejected), encoded in the loader workers; a
    pair that cannot be encoded is skipped and counted; a lock-step pad of the sampler is dropped uncounted."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        tok = self.processor.tokenizer
        prompts, chosen, rejected, tiles, kept, skipped = [], [], [], [], [], 0
        for s in samples:
            if is_pad(s):
                continue
            try:
                enc = self.processor.encode(s, target=None)
                c, r = (tok(s.meta[k] + tok.eos_token, add_special_tokens=False)["input_ids"]
                        for k in ("chosen", "rejected"))  # fmt: skip
            except (KeyError, ValueError, OSError):
                skipped += 1
                continue
            prompts.append(enc["input_ids"])
            chosen.append(c)
            rejected.append(r)
            if enc["pixel_values"] is not None:
                tiles.append(enc["pixel_values"])
            kept.append(s)
        if not kept:
            return {"empty": True, "skipped": skipped}
        ids, attn, cmask = completion_rows(prompts * 2, chosen + rejected, tok.pad_token_id)  # [2B, L], [2B, T]
        pixels = torch.cat(tiles * 2) if tiles else None  # tiles in row order: chosen rows, then rejected
        return {"input_ids": ids, "attention_mask": attn, "completion_mask": cmask, "pixel_values": pixels,
                "samples": kept, "skipped": skipped}  # fmt: skip


def check_pairs(cfg: Mapping[str, Any], datasets: Mapping[str, Any]) -> None:
    """Refuse data without chosen/rejected pairs, in one line naming the stage and the data."""
    for split, ds in datasets.items():
        if ds is not None and len(ds) and "chosen" not in ds[0].meta:
            raise ConfigError(
                f"stage={cfg['stage']['name']}: the {split} data '{cfg['data']['name']}' has no "
                "chosen/rejected pairs; use data=pairs data.train=<pairs.jsonl> or data=synthetic_pairs"
            )

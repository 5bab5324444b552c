"""Batches from samples, made in the loader workers: a sample that cannot be encoded is skipped and counted,
never a dead run; a lock-step pad of the sampler (:func:`r1v.data.sampler.is_pad`) is dropped uncounted.

- :class:`Collator` — question + target completion rows for the next-token loss (padded, or packed);
- :class:`PairCollator` — chosen and rejected completions of one prompt (preference and reward-model stages).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from r1v.core.errors import ConfigError, DataError
from r1v.core.interfaces import Sample
from r1v.data.audio import audio_batch
from r1v.data.datasets import error_kind, too_long
from r1v.data.processor import Processor
from r1v.data.sampler import is_pad
from r1v.rl.grpo import completion_rows

log = logging.getLogger(__name__)


def _by_id(sample_id: str) -> str:
    return f"sample {sample_id}"


@dataclass(frozen=True)
class Limits:
    """What a training batch may hold and what happens to a sample that breaks it: the longest row after
    image-token expansion (``data.max_tokens``, else the backbone's context; :func:`r1v.data.datasets.too_long`,
    the rule ``data check`` applies), ``data.on_bad_sample`` (``skip``: drop and count, ``error``: stop the run),
    and how a sample is named in the one-line message (``file:line`` for JSONL)."""

    max_tokens: int | None = None
    on_bad_sample: str = "skip"
    where: Callable[[str], str] = _by_id


class _Screen:
    """The bad-sample rule both collators share: a skipped sample is recorded by id with its kind of bad (each
    counted once in run.json), or under ``on_bad_sample="error"`` stops the run in one line."""

    def __init__(self, limits: Limits | None) -> None:
        self.limits = limits or Limits()
        self.rows: dict[str, str] = {}

    def bad(self, sample: Sample, message: str) -> None:
        if self.limits.on_bad_sample == "error":
            raise DataError(f"{message}; data.on_bad_sample=error stops here (skip drops the row)")
        self.rows[str(sample.id)] = error_kind(message)
        log.warning("skipping %s", message)

    def too_long(self, sample: Sample, n: int) -> bool:
        """Whether ``sample`` (``n`` tokens in its longest row) breaks the length limit (then recorded)."""
        error = self.limits.max_tokens and too_long(self.limits.where(sample.id), n, self.limits.max_tokens)
        if error:
            self.bad(sample, error)
        return bool(error)

    def counts(self) -> dict[str, Any]:
        return {"skipped": len(self.rows), **({"skipped_rows": self.rows} if self.rows else {})}


class Collator:
    """Encodes samples in the loader workers; a sample that cannot be encoded, or is longer than the limit after
    image-token expansion, is skipped and counted by kind, or stops the run (:class:`Limits`). A lock-step pad of
    the sampler (:func:`r1v.data.sampler.is_pad`) is dropped uncounted: it carries no loss.

    The length is checked here, on the one encoding the batch needs, not when rows are read: no row is tokenized
    twice, start-up stays flat however large the data, and every dataset (synthetic, JSONL, a plugin's) is covered.

    ``teacher=True`` (``stage.text_teacher``) also encodes each sample's text view (:meth:`text_twins`).
    """

    def __init__(self, processor: Processor, target: str | None, padding_side: str = "right",
                 pack_max_tokens: int | None = None, attn: str = "sdpa",
                 limits: Limits | None = None, teacher: bool = False) -> None:  # fmt: skip
        if teacher and (pack_max_tokens or padding_side != "right"):
            raise ConfigError("stage.text_teacher needs padded, right-aligned rows: set stage.packing=false")
        self.processor, self.target, self.padding_side = processor, target, padding_side
        self.pack_max_tokens, self.attn = pack_max_tokens, attn  # packing: rows of up to this many tokens
        self.limits, self.teacher = limits, teacher

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        screen, encoded, kept = _Screen(self.limits), [], []
        for s in samples:
            if is_pad(s):  # a repeat that only keeps the ranks in step (not a skipped sample)
                continue
            if s.meta.get("_error"):  # the dataset could not decode it
                screen.bad(s, s.meta["_error"])
                continue
            try:
                e = self.processor.encode(s, self.target)
            except (ValueError, OSError) as exc:
                screen.bad(s, f"{screen.limits.where(getattr(s, 'id', '?'))}: cannot encode: {exc}")
                continue
            if not screen.too_long(s, len(e["input_ids"])):
                encoded.append(e)
                kept.append(s)
        if not encoded:
            return {**screen.counts(), "empty": True}
        if self.pack_max_tokens:
            batch = self.processor.pack(encoded, self.pack_max_tokens, self.attn)
        else:
            batch = self.processor.collate(encoded, self.padding_side)
        batch.update(screen.counts())
        if torch.is_tensor(batch.get("labels")):  # the tokens the loss averages over (SFTStage.token_weight)
            batch["loss_tokens"] = int((batch["labels"][:, 1:] != -100).sum())
        if self.teacher:
            batch.update(self.text_twins(kept, encoded))
        return batch

    def text_twins(self, samples: list[Sample], encoded: list[dict[str, Any]]) -> dict[str, Any]:
        """The text twins of the samples that carry a text view (``meta["text_view"]``: the question with every
        medium written out as text, what the substitute LM reads instead of the media) and where each student row
        lines up with its twin: every position when both have the same length (the text gives one token per
        media token, as ``synthetic_omni``'s clips do), else their longest common suffix (the question after the
        last medium, and the answer). Returns ``teacher`` (the twins' ``input_ids`` and ``attention_mask``, right
        padded), ``teacher_src`` and ``teacher_dst`` ((N, 2) row and position pairs, student and twin), and
        ``teacher_missing`` (samples without a usable view), or only the last when no sample has one."""
        twins, src, dst, missing = [], [], [], 0
        for row, (s, e) in enumerate(zip(samples, encoded, strict=True)):
            view = s.meta.get("text_view")
            text_only = dict(images=[], image_paths=[], audios=[], audio_paths=[], videos=[], video_paths=[])
            try:
                twin = view and self.processor.encode(replace(s, question=view, **text_only), self.target)
            except (ValueError, OSError):
                twin = None
            if not twin:
                missing += 1
                continue
            a, b = e["input_ids"], twin["input_ids"]
            k = len(a)  # positions compared, counted from each row's end
            if len(a) != len(b):
                k = next((j for j in range(min(len(a), len(b))) if a[-1 - j] != b[-1 - j]), min(len(a), len(b)))
            src += [(row, p) for p in range(len(a) - k, len(a))]
            dst += [(len(twins), p) for p in range(len(b) - k, len(b))]
            twins.append(twin)
        if not twins:
            return {"teacher_missing": missing}
        t = self.processor.collate(twins, "right")
        pairs = {"teacher_src": torch.tensor(src), "teacher_dst": torch.tensor(dst), "teacher_missing": missing}
        return {"teacher": {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}, **pairs}


class PairCollator:
    """Pairs → one batch of 2B rows (chosen rows first, then rejected), encoded in the loader workers; a pair
    that cannot be encoded, or whose longer row (prompt + chosen or rejected) breaks the length limit, is skipped
    and counted or stops the run (:class:`Limits`); a lock-step pad of the sampler is dropped uncounted."""

    def __init__(self, processor: Any, limits: Limits | None = None) -> None:
        self.processor, self.limits = processor, limits

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        tok = self.processor.tokenizer
        screen = _Screen(self.limits)
        prompts, chosen, rejected, tiles, kept, encoded = [], [], [], [], [], []
        for s in samples:
            if is_pad(s):
                continue
            if s.meta.get("_error"):
                screen.bad(s, s.meta["_error"])
                continue
            try:
                enc = self.processor.encode(s, target=None)
                c, r = (tok(s.meta[k] + tok.eos_token, add_special_tokens=False)["input_ids"]
                        for k in ("chosen", "rejected"))  # fmt: skip
            except (KeyError, TypeError, ValueError, OSError) as exc:
                screen.bad(s, f"{screen.limits.where(getattr(s, 'id', '?'))}: cannot encode: {exc!r}")
                continue
            if screen.too_long(s, len(enc["input_ids"]) + max(len(c), len(r))):
                continue
            prompts.append(enc["input_ids"])
            chosen.append(c)
            rejected.append(r)
            if enc["pixel_values"] is not None:
                tiles.append(enc["pixel_values"])
            encoded.append(enc)
            kept.append(s)
        if not kept:
            return {"empty": True, **screen.counts()}
        ids, attn, cmask = completion_rows(prompts * 2, chosen + rejected, tok.pad_token_id)  # [2B, L], [2B, T]
        pixels = torch.cat(tiles * 2) if tiles else None  # tiles in row order: chosen rows, then rejected
        audio = audio_batch(encoded * 2)  # the clips in the same row order ({} without audio)
        return {"input_ids": ids, "attention_mask": attn, "completion_mask": cmask, "pixel_values": pixels,
                "samples": kept, **audio, **screen.counts()}  # fmt: skip


def check_pairs(cfg: Mapping[str, Any], datasets: Mapping[str, Any]) -> None:
    """Refuse data without chosen/rejected pairs, in one line naming the stage and the data."""
    for split, ds in datasets.items():
        if ds is not None and len(ds) and "chosen" not in ds[0].meta:
            raise ConfigError(
                f"stage={cfg['stage']['name']}: the {split} data '{cfg['data']['name']}' has no "
                "chosen/rejected pairs; use data=pairs data.train=<pairs.jsonl> or data=synthetic_pairs"
            )

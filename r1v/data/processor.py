"""Turn Samples into model inputs: chat template, image-token expansion, labels, padding.

The prompt is the chat template's generation prompt (for R1-style backbones it ends with the
pre-filled ``<think>\\n``); the completion is what follows it and is the only part with labels:
``reasoning\\n</think>\\n\\n\\boxed{answer}`` for reasoning targets, ``\\boxed{answer}`` for
direct ones, then EOS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from r1v.core.interfaces import (
    AUD_END,
    AUD_START,
    AUDIO_CONTEXT,
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    THINK_CLOSE,
    Sample,
)
from r1v.data.audio import AudioSpec, audio_batch
from r1v.data.images import IMAGENET_MEAN, IMAGENET_STD, preprocess
from r1v.data.video import VideoKnobs, expand_videos, visual_order
from r1v.model.varlen import NAME as VARLEN
from r1v.model.varlen import packed_kwargs

IGNORE = -100


def boxed(answer: str) -> str:
    return f"\\boxed{{{answer}}}"


@dataclass
class Processor:
    tokenizer: Any
    chat_template: str | None
    image_size: int
    tokens_per_tile: int
    max_tiles: int = 1
    use_thumbnail: bool = True
    reasoning: bool = True  # backbone writes <think> chains (R1 format)
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    audio: AudioSpec | None = None  # set when an audio encoder is composed (r1v.data.audio)
    video: VideoKnobs = field(default_factory=VideoKnobs)  # data.video / data.max_visual_tokens (r1v.data.video)

    def images(self, sample: Sample) -> tuple[torch.Tensor | None, list[int]]:
        """All tiles of the sample's images (n_tiles, 3, S, S) and the tile count per image."""
        if not sample.images:
            return None, []
        tiling = (self.image_size, self.max_tiles, self.use_thumbnail, self.image_mean, self.image_std)
        per_image = [preprocess(im, *tiling) for im in sample.images]
        return torch.cat(per_image), [t.shape[0] for t in per_image]

    def visuals(self, sample: Sample) -> tuple[str, torch.Tensor | None, list[int]]:
        """The question with each ``<video>`` expanded into ``Frame k: <image>`` lines, all tiles of images and
        frames in placeholder order and tiles per ``<image>``; ValueError over ``data.max_visual_tokens``."""
        if not sample.videos:
            question, (pixels, tiles) = sample.question, self.images(sample)
        else:
            counts = [len(v) for v in sample.videos]
            question = expand_videos(sample.question, len(sample.images), counts)
            images = (self.image_size, self.max_tiles, self.use_thumbnail, self.image_mean, self.image_std)
            # a frame is one tile unless the budget allows more (a thumbnail only makes sense beside several tiles)
            frame = (self.image_size, self.video.max_tiles_per_frame, self.video.max_tiles_per_frame > 1,
                     self.image_mean, self.image_std)  # fmt: skip
            per = [preprocess(sample.images[i], *images) if kind == "image" else preprocess(sample.videos[i][k], *frame)
                   for kind, i, k in visual_order(sample.question, len(sample.images), counts)]  # fmt: skip
            pixels, tiles = (torch.cat(per) if per else None), [t.shape[0] for t in per]
        budget = self.video.max_visual_tokens
        if budget is not None and sum(tiles) * self.tokens_per_tile > budget:
            raise ValueError(f"visual-token budget: {sum(tiles) * self.tokens_per_tile} visual tokens "
                             f"({sum(tiles)} tiles) exceed data.max_visual_tokens={budget}")  # fmt: skip
        return question, pixels, tiles

    def audios(self, sample: Sample) -> tuple[torch.Tensor | None, list[int], list[int], list[int]]:
        """All windows of the sample's clips (n_windows, n_mels, W), real mel frames per window, windows per clip
        and ``<audio_ctx>`` tokens per clip."""
        if not sample.audios:
            return None, [], [], []
        if self.audio is None:
            raise ValueError(f"the sample has {len(sample.audios)} audio clips but the model has no audio encoder "
                             "(compose one: audio=whisper_tiny)")  # fmt: skip
        per_clip = [self.audio.features(clip) for clip in sample.audios]
        frames = [f for _, fr in per_clip for f in fr]
        return (torch.cat([x for x, _ in per_clip]), frames, [len(fr) for _, fr in per_clip],
                [self.audio.tokens(fr) for _, fr in per_clip])  # fmt: skip

    def prompt(self, question: str, tiles_per_image: list[int], audio_tokens: list[int] | None = None) -> str:
        content = self._audio_placeholders(question, audio_tokens or [])
        missing = len(tiles_per_image) - content.count(IMAGE_PLACEHOLDER)
        if missing > 0:  # images without a placeholder go first, one per line
            content = f"{IMAGE_PLACEHOLDER}\n" * missing + content
        elif missing < 0:
            raise ValueError(f"the question has {content.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} "
                             f"placeholders but the sample has {len(tiles_per_image)} images")  # fmt: skip
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], chat_template=self.chat_template, tokenize=False,
            add_generation_prompt=True,
        )  # fmt: skip
        for n in tiles_per_image:  # expand in order
            text = text.replace(IMAGE_PLACEHOLDER, IMG_START + IMG_CONTEXT * (self.tokens_per_tile * n) + IMG_END, 1)
        for n in audio_tokens or []:
            text = text.replace(AUDIO_PLACEHOLDER, AUD_START + AUDIO_CONTEXT * n + AUD_END, 1)
        return text

    @staticmethod
    def _audio_placeholders(question: str, audio_tokens: list[int]) -> str:
        """One ``<audio>`` per clip: missing ones go first, one per line (after any missing ``<image>``)."""
        missing = len(audio_tokens) - question.count(AUDIO_PLACEHOLDER)
        if missing < 0:
            raise ValueError(
                f"placeholder count: the question has {question.count(AUDIO_PLACEHOLDER)} "
                f"{AUDIO_PLACEHOLDER} placeholders but the sample has {len(audio_tokens)} audio clips"
            )
        return f"{AUDIO_PLACEHOLDER}\n" * missing + question

    def completion(self, sample: Sample, target: str) -> str:
        if target == "reasoning" and self.reasoning:
            if not sample.reasoning:
                raise ValueError(f"sample {sample.id}: field 'reasoning' is empty but stage.target=reasoning")
            return f"{sample.reasoning}\n{THINK_CLOSE}\n\n{boxed(sample.answer)}"
        if self.reasoning:  # a reasoner still closes its (empty) thought before a direct answer
            return f"{THINK_CLOSE}\n\n{boxed(sample.answer)}"
        return boxed(sample.answer)

    def encode(self, sample: Sample, target: str | None = "answer") -> dict[str, Any]:
        """One sample -> ids (prompt + completion + EOS), labels on the completion only, tiles."""
        question, pixels, tiles = self.visuals(sample)
        feats, frames, windows, audio_tokens = self.audios(sample)
        prompt = self.prompt(question, tiles, audio_tokens)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        out: dict[str, Any] = {"id": sample.id, "pixel_values": pixels, "prompt_len": len(prompt_ids)}
        if feats is not None:  # image-only samples keep exactly their old keys
            out.update(audio_features=feats, audio_frames=frames, audio_windows=windows)
        if target is None:  # generation: prompt only
            out["input_ids"], out["labels"] = prompt_ids, [IGNORE] * len(prompt_ids)
            return out
        text = self.completion(sample, target) + self.tokenizer.eos_token
        completion_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        out["input_ids"] = prompt_ids + completion_ids
        out["labels"] = [IGNORE] * len(prompt_ids) + completion_ids
        return out

    def pack(self, encoded: list[dict[str, Any]], max_tokens: int, attn: str = "sdpa") -> dict[str, Any]:
        """Pack samples into rows of at most ``max_tokens`` (first fit, in order), without leakage:
        positions restart at 0 for every sample and a block-diagonal causal mask (B, 1, L, L) keeps
        samples from attending to each other. Tiles stay in token order (row by row, sample by sample).
        A sample longer than ``max_tokens`` gets a row of its own.

        With ``attn="r1v_varlen"`` (:mod:`r1v.model.varlen`) there are no rows and no mask: every sample is
        concatenated into one row of ``Σ nᵢ`` tokens and ``attn_kwargs`` carries the cumulative lengths that
        the flash kernel needs (``max_tokens`` is then unused)."""
        if attn == VARLEN:
            return self.pack_varlen(encoded)
        rows: list[list[dict[str, Any]]] = []
        for e in encoded:
            n = len(e["input_ids"])
            row = next((r for r in rows if sum(len(x["input_ids"]) for x in r) + n <= max_tokens), None)
            if row is None:
                rows.append([e])
            else:
                row.append(e)
        width = max(sum(len(x["input_ids"]) for x in r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        seq = torch.full((len(rows), width), -1, dtype=torch.long)  # which sample each token belongs to
        order = []
        for b, row in enumerate(rows):
            start = 0
            for k, e in enumerate(row):
                n = len(e["input_ids"])
                ids[b, start : start + n] = torch.tensor(e["input_ids"])
                labels[b, start : start + n] = torch.tensor(e["labels"])
                positions[b, start : start + n] = torch.arange(n)
                seq[b, start : start + n] = k
                start += n
                order.append(e)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = (seq[:, :, None] == seq[:, None, :]) & (seq[:, None, :] >= 0) & causal  # (B, L, L)
        mask |= torch.eye(width, dtype=torch.bool)  # padding queries see themselves (no all-masked rows)
        mask = mask[:, None]  # (B, 1, L, L)
        if attn == "eager":  # eager attention adds the mask to the scores
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        tiles = [e["pixel_values"] for e in order if e["pixel_values"] is not None]
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels,
                "pixel_values": torch.cat(tiles) if tiles else None, "ids": [e["id"] for e in order],
                "lengths": [len(e["input_ids"]) for e in order], **audio_batch(order)}  # fmt: skip

    def pack_varlen(self, encoded: list[dict[str, Any]]) -> dict[str, Any]:
        """Samples -> one (1, Σ nᵢ) row with positions restarting per sample and ``attn_kwargs`` for the
        varlen attention; the all-ones (1, T) mask lets the backbone skip building a mask."""
        lengths = [len(e["input_ids"]) for e in encoded]
        ids = torch.tensor([t for e in encoded for t in e["input_ids"]])[None]  # (1, T)
        labels = torch.tensor([t for e in encoded for t in e["labels"]])[None]  # (1, T)
        positions = torch.cat([torch.arange(n) for n in lengths])[None]  # (1, T)
        tiles = [e["pixel_values"] for e in encoded if e["pixel_values"] is not None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": positions, "labels": labels,
                "pixel_values": torch.cat(tiles) if tiles else None, "ids": [e["id"] for e in encoded],
                "lengths": lengths, "attn_kwargs": packed_kwargs(lengths), **audio_batch(encoded)}  # fmt: skip

    def decode_completion(self, ids: list[int]) -> str:
        """Generated ids -> text up to EOS; ``</think>`` stays (some tokenizers mark it special)."""
        tok = self.tokenizer
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id)]
        return tok.decode([i for i in ids if i != tok.pad_token_id], skip_special_tokens=False)

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, Any]:
        """Pad to the longest; right for training, left for generation. Tiles are concatenated."""
        width = max(len(e["input_ids"]) for e in encoded)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for b, e in enumerate(encoded):
            n = len(e["input_ids"])
            sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
            ids[b, sl], labels[b, sl], mask[b, sl] = (
                torch.tensor(e["input_ids"]),
                torch.tensor(e["labels"]),
                1,
            )
        tiles = [e["pixel_values"] for e in encoded if e["pixel_values"] is not None]
        pixels = torch.cat(tiles) if tiles else None
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels,
                "ids": [e["id"] for e in encoded], "lengths": [len(e["input_ids"]) for e in encoded],
                **audio_batch(encoded)}  # fmt: skip

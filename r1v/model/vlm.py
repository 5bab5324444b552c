"""The vision-language model: encoder → adapter → backbone, image tokens spliced into the text.

Every ``<image>`` in a prompt becomes ``<img>`` + ``<IMG_CONTEXT>`` × (T · tiles) + ``</img>``
(see :mod:`r1v.data.processor`); here the embeddings at ``<IMG_CONTEXT>`` positions are replaced,
in order, by the adapter's outputs for all tiles of all images of the batch. With an audio encoder composed,
``<audio_ctx>`` positions get the audio adapter's outputs the same way: every window of every clip, each cut to
the tokens of real audio (:func:`r1v.data.audio.tokens_for`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class VisionLanguageModel(nn.Module):
    def __init__(self, vision: nn.Module, adapter: nn.Module, backbone: nn.Module, img_context_id: int,
                 audio: nn.Module | None = None, audio_adapter: nn.Module | None = None,
                 audio_context_id: int | None = None) -> None:  # fmt: skip
        super().__init__()
        self.vision, self.adapter, self.backbone = vision, adapter, backbone
        self.img_context_id = img_context_id
        # submodules only when composed (None is a plain attribute): the image-only model's state dict is unchanged
        self.audio, self.audio_adapter = audio, audio_adapter
        self.audio_context_id = audio_context_id

    @property
    def tokens_per_tile(self) -> int:
        side = int(self.vision.grid_size * self.adapter.downsample_ratio)
        return side * side

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N_tiles, 3, S, S) -> (N_tiles, T, D) backbone-space tokens. Repeated tiles are encoded once: GRPO's
        G completions of a prompt carry its image G times, in the rollout, the reference and the update."""
        tiles, inverse = distinct_tiles(pixel_values)  # (U, 3, S, S), (N,) or None
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(grad):  # a frozen encoder keeps no activations
            dtype = next(self.vision.parameters()).dtype
            features = self.vision(tiles.to(dtype))  # (U, g, g, C)
        tokens = self.adapter(features.to(next(self.adapter.parameters()).dtype))  # (U, T, D)
        return tokens if inverse is None else tokens[inverse]  # (N, T, D); the backward sums a tile's repeats

    def encode_audio(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(N_windows, n_mels, W) log-mel windows and (N_windows,) real mel frames -> (Σ kept tokens, D): each
        window's tokens that see real audio, window after window."""
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.audio.parameters())
        with torch.set_grad_enabled(grad):
            dtype = next(self.audio.parameters()).dtype
            hidden = self.audio(features.to(dtype))  # (N, T, C)
        tokens = self.audio_adapter(hidden.to(next(self.audio_adapter.parameters()).dtype))  # (N, T, D)
        keep = (frames.to(tokens.device) + self.audio.frames_per_token - 1) // self.audio.frames_per_token  # (N,)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < keep[:, None]  # (N, T)
        return tokens[mask]  # (Σ keep, D), row-major: window by window

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L) ids [+ tiles] [+ audio windows] -> (B, L, D) input embeddings with image and audio tokens spliced
        in."""
        embeds = self._embed_images(input_ids, pixel_values)
        if self.audio_context_id is None:
            if audio_features is not None:
                raise ValueError("the batch carries audio but the model has no audio encoder (compose audio=...)")
            return embeds
        slots = input_ids == self.audio_context_id  # (B, L)
        n_slots = int(slots.sum())
        if audio_features is None or audio_features.numel() == 0:
            if n_slots:
                raise ValueError(f"the batch has {n_slots} <audio_ctx> tokens but no audio")
            return embeds
        if audio_frames is None:
            raise ValueError("audio_features come without audio_frames (real mel frames per window)")
        audio_tokens = self.encode_audio(audio_features, audio_frames)  # (Σ, D)
        if audio_tokens.shape[0] != n_slots:
            raise ValueError(f"{audio_tokens.shape[0]} audio tokens ({audio_features.shape[0]} windows) do not fill "
                             f"the {n_slots} <audio_ctx> slots of the batch (processor and model disagree on tokens "
                             "per window)")  # fmt: skip
        return embeds.masked_scatter(slots.unsqueeze(-1), audio_tokens.to(embeds.dtype))

    def _embed_images(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.backbone.get_input_embeddings()(input_ids)  # (B, L, D)
        slots = input_ids == self.img_context_id  # (B, L)
        n_slots = int(slots.sum())
        if pixel_values is None or pixel_values.numel() == 0:
            if n_slots:
                raise ValueError(f"the batch has {n_slots} <IMG_CONTEXT> tokens but no images")
            return embeds
        image_tokens = self.encode_images(pixel_values)  # (N, T, D)
        if image_tokens.shape[0] * image_tokens.shape[1] != n_slots:
            raise ValueError(
                f"{image_tokens.shape[0]} tiles × {image_tokens.shape[1]} tokens do not fill the "
                f"{n_slots} <IMG_CONTEXT> slots of the batch (processor and model disagree on tokens per tile)"
            )
        flat = image_tokens.reshape(-1, image_tokens.shape[-1]).to(embeds.dtype)  # (N·T, D)
        return embeds.masked_scatter(slots.unsqueeze(-1), flat)  # row-major: sample by sample, in order

    @property
    def never_generated(self) -> tuple[int, ...]:
        """Token ids a rollout must never sample: the ``<IMG_CONTEXT>`` placeholder. A completion holding one
        cannot be scored: re-embedding prompt + completion finds more image slots than image tokens (seen with
        random weights on the H200). Every rollout engine suppresses them."""
        return (self.img_context_id,) if self.audio_context_id is None else (self.img_context_id, self.audio_context_id)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_frames: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Causal-LM output; ``loss`` is the mean over tokens whose label is not -100 (answers).

        ``attention_mask`` is (B, L) for padded batches or a (B, 1, L, L) mask with ``position_ids`` for
        packed ones (see ``Processor.pack``).
        """
        embeds = self.embed(input_ids, pixel_values, audio_features, audio_frames)
        position_ids = _positions(attention_mask, position_ids)
        return self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                             labels=labels, **kwargs)  # fmt: skip

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_frames: torch.Tensor | None = None,
        all_layers: bool = False,
        **kwargs: Any,
    ) -> Any:
        """(B, L) ids [+ tiles] -> (B, L, D) the backbone's last hidden states, without the LM head (for losses
        that run the head in chunks: :func:`r1v.rl.grpo.chunked_logprobs`); ``all_layers``: the embeddings and
        every layer's output, L + 1 tensors of (B, L, D), the last one the same final-normed states."""
        embeds = self.embed(input_ids, pixel_values, audio_features, audio_frames)
        out = self.backbone.base_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                       position_ids=_positions(attention_mask, position_ids),
                                       output_hidden_states=all_layers, **kwargs)  # fmt: skip
        return out.hidden_states if all_layers else out.last_hidden_state

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_frames: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Left-padded prompts -> (B, new_tokens) completions, with the backbone's KV cache; tokens in
        :attr:`never_generated` are suppressed."""
        suppress = list(generate_kwargs.pop("suppress_tokens", None) or [])
        generate_kwargs["suppress_tokens"] = sorted({*suppress, *self.never_generated})
        embeds = self.embed(input_ids, pixel_values, audio_features, audio_frames)
        return self.backbone.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)


def _positions(attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None) -> torch.Tensor | None:
    """Positions that count real tokens only, so padding never shifts them (given ones win: packed rows)."""
    if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return position_ids


def distinct_tiles(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, ...) tiles -> (the U distinct ones in first-seen order, (N,) index of each tile among them), or
    (``pixel_values``, None) when all are distinct. Tiles are grouped by a fingerprint (one dot product each) and
    the grouping is then checked exactly, so two different tiles are never merged (one host sync per call)."""
    n = pixel_values.shape[0]
    if n < 2:
        return pixel_values, None
    flat = pixel_values.reshape(n, -1)  # (N, F)
    weights = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=torch.float64).sqrt_()  # distinct scales
    keys = flat.double() @ weights  # (N,)
    _, group = torch.unique(keys, return_inverse=True)  # (N,) group of each tile, groups in key order
    first = torch.full((n,), n, device=flat.device).scatter_reduce_(0, group, torch.arange(n, device=flat.device),
                                                                    "amin")  # (groups,) padded with n  # fmt: skip
    u = int((first < n).sum())
    if u == n or not torch.equal(flat, flat[first[group]]):  # nothing repeated, or a fingerprint collision
        return pixel_values, None
    order = first[:u].argsort()  # groups in first-seen order
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(u, device=flat.device))
    return pixel_values[first[:u][order]], rank[group]

"""The vision-language model: encoder → adapter → backbone, image tokens spliced into the text.

Every ``<image>`` in a prompt becomes ``<img>`` + ``<IMG_CONTEXT>`` × (T · tiles) + ``</img>``
(see :mod:`r1v.data.processor`); here the embeddings at ``<IMG_CONTEXT>`` positions are replaced,
in order, by the adapter's outputs for all tiles of all images of the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class VisionLanguageModel(nn.Module):
    def __init__(self, vision: nn.Module, adapter: nn.Module, backbone: nn.Module, img_context_id: int) -> None:
        super().__init__()
        self.vision, self.adapter, self.backbone = vision, adapter, backbone
        self.img_context_id = img_context_id

    @property
    def tokens_per_tile(self) -> int:
        side = int(self.vision.grid_size * self.adapter.downsample_ratio)
        return side * side

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N_tiles, 3, S, S) -> (N_tiles, T, D) backbone-space tokens."""
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(grad):  # a frozen encoder keeps no activations
            dtype = next(self.vision.parameters()).dtype
            features = self.vision(pixel_values.to(dtype))  # (N, g, g, C)
        return self.adapter(features.to(next(self.adapter.parameters()).dtype))  # (N, T, D)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids [+ tiles] -> (B, L, D) input embeddings with image tokens spliced in."""
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
        return (self.img_context_id,)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Causal-LM output; ``loss`` is the mean over tokens whose label is not -100 (answers).

        ``attention_mask`` is (B, L) for padded batches or a (B, 1, L, L) mask with ``position_ids`` for
        packed ones (see ``Processor.pack``).
        """
        embeds = self.embed(input_ids, pixel_values)
        position_ids = _positions(attention_mask, position_ids)
        return self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                             labels=labels, **kwargs)  # fmt: skip

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """(B, L) ids [+ tiles] -> (B, L, D) the backbone's last hidden states, without the LM head (for losses
        that run the head in chunks: :func:`r1v.rl.grpo.chunked_logprobs`)."""
        embeds = self.embed(input_ids, pixel_values)
        base = self.backbone.base_model
        return base(inputs_embeds=embeds, attention_mask=attention_mask,
                    position_ids=_positions(attention_mask, position_ids), **kwargs).last_hidden_state  # fmt: skip

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Left-padded prompts -> (B, new_tokens) completions, with the backbone's KV cache; tokens in
        :attr:`never_generated` are suppressed."""
        suppress = list(generate_kwargs.pop("suppress_tokens", None) or [])
        generate_kwargs["suppress_tokens"] = sorted({*suppress, *self.never_generated})
        embeds = self.embed(input_ids, pixel_values)
        return self.backbone.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)


def _positions(attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None) -> torch.Tensor | None:
    """Positions that count real tokens only, so padding never shifts them (given ones win: packed rows)."""
    if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return position_ids

"""Parts → model: the special tokens R1V adds to the backbone's tokenizer, and the VLM with its Processor. Every
build path ends here (parts by registry name in :mod:`r1v.model.build`, an InternVL-chat folder in
:mod:`r1v.model.internvl`)."""

from __future__ import annotations

import torch
from torch import nn

from r1v.core.interfaces import (
    AUD_END,
    AUD_START,
    AUDIO_CONTEXT,
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    THINK_CLOSE,
    THINK_OPEN,
    LanguageBackbone,
)
from r1v.data.audio import AudioSpec
from r1v.data.images import IMAGENET_MEAN, IMAGENET_STD
from r1v.data.processor import Processor
from r1v.model.vlm import VisionLanguageModel
from r1v.runtime.weights import fp32_rotary, gathered

PARTS = ("vision", "adapter", "backbone")
AUDIO_PARTS = ("audio", "audio_adapter")  # present only when an audio encoder is composed
AUDIO_TOKENS = (AUD_START, AUD_END, AUDIO_CONTEXT)


def ensure_special_tokens(backbone: LanguageBackbone, extra: tuple[str, ...] = ()) -> None:
    """Add image/think tokens (and ``extra`` ones: the audio tokens when audio is composed) the tokenizer lacks and
    grow the embeddings (R1V re-assembly step). The tokenizer object changes, never its files.

    New rows start at the mean embedding so that ``<img>``/``</img>`` are sensible inputs.
    """
    tok = backbone.tokenizer
    wanted = (IMG_START, IMG_END, IMG_CONTEXT, THINK_OPEN, THINK_CLOSE, *extra)
    missing = [t for t in wanted if t not in tok.get_vocab()]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not missing:
        return
    tok.add_tokens(missing, special_tokens=True)  # never split; the tokenizer's special-token map is kept
    emb = backbone.model.get_input_embeddings()
    old = emb.weight.shape[0]
    if len(tok) > old:
        backbone.model.resize_token_embeddings(len(tok), mean_resizing=False)
        with gathered(backbone.model, modifier_rank=0), torch.no_grad():  # new rows: the mean row, deterministic
            for layer in {backbone.model.get_input_embeddings(), backbone.model.get_output_embeddings()} - {None}:
                if not layer.weight.is_meta:
                    layer.weight[old:] = layer.weight[:old].mean(0)


def assemble(vision: nn.Module, adapter: nn.Module, backbone: LanguageBackbone, max_tiles: int = 1,
             use_thumbnail: bool = True, audio: tuple[nn.Module, nn.Module, str] | None = None,
             ) -> tuple[VisionLanguageModel, Processor]:  # fmt: skip
    """The parts → the model and its Processor (special tokens added first); shared by every build path. ``audio``:
    (encoder, adapter, ``audio.long_clips``) when an audio path is composed."""
    ensure_special_tokens(backbone, AUDIO_TOKENS if audio else ())
    img_context_id = backbone.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    audio_parts = {}
    if audio:
        audio_parts = {"audio": audio[0], "audio_adapter": audio[1],
                       "audio_context_id": backbone.tokenizer.convert_tokens_to_ids(AUDIO_CONTEXT)}  # fmt: skip
    vlm = VisionLanguageModel(vision, adapter, backbone.model, img_context_id, **audio_parts)
    fp32_rotary(vlm)  # zero.Init builds rotary frequencies in bf16
    processor = Processor(
        tokenizer=backbone.tokenizer, chat_template=backbone.chat_template, image_size=vision.image_size,
        tokens_per_tile=vlm.tokens_per_tile, max_tiles=max_tiles, use_thumbnail=use_thumbnail,
        reasoning=backbone.reasoning,
        image_mean=tuple(getattr(vision, "image_mean", IMAGENET_MEAN)),  # the encoder's own statistics
        image_std=tuple(getattr(vision, "image_std", IMAGENET_STD)),
        audio=AudioSpec.of(audio[0], audio[2]) if audio else None,
    )  # fmt: skip
    return vlm, processor

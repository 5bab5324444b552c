"""Parts → model: the special tokens R1V adds to the backbone's tokenizer, and the VLM with its Processor. Every
build path ends here (parts by registry name in :mod:`r1v.model.build`, an InternVL-chat folder in
:mod:`r1v.model.internvl`)."""

from __future__ import annotations

import torch
from torch import nn

from r1v.core.interfaces import IMG_CONTEXT, IMG_END, IMG_START, THINK_CLOSE, THINK_OPEN, LanguageBackbone
from r1v.data.images import IMAGENET_MEAN, IMAGENET_STD
from r1v.data.processor import Processor
from r1v.model.vlm import VisionLanguageModel
from r1v.runtime.weights import fp32_rotary, gathered

PARTS = ("vision", "adapter", "backbone")


def ensure_special_tokens(backbone: LanguageBackbone) -> None:
    """Add image/think tokens the tokenizer lacks and grow the embeddings (R1V re-assembly step).

    New rows start at the mean embedding so that ``<img>``/``</img>`` are sensible inputs.
    """
    tok = backbone.tokenizer
    missing = [t for t in (IMG_START, IMG_END, IMG_CONTEXT, THINK_OPEN, THINK_CLOSE) if t not in tok.get_vocab()]
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
             use_thumbnail: bool = True) -> tuple[VisionLanguageModel, Processor]:  # fmt: skip
    """The parts → the model and its Processor (special tokens added first); shared by every build path."""
    ensure_special_tokens(backbone)
    img_context_id = backbone.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    vlm = VisionLanguageModel(vision, adapter, backbone.model, img_context_id)
    fp32_rotary(vlm)  # zero.Init builds rotary frequencies in bf16
    processor = Processor(
        tokenizer=backbone.tokenizer, chat_template=backbone.chat_template, image_size=vision.image_size,
        tokens_per_tile=vlm.tokens_per_tile, max_tiles=max_tiles, use_thumbnail=use_thumbnail,
        reasoning=backbone.reasoning,
        image_mean=tuple(getattr(vision, "image_mean", IMAGENET_MEAN)),  # the encoder's own statistics
        image_std=tuple(getattr(vision, "image_std", IMAGENET_STD)),
    )  # fmt: skip
    return vlm, processor

"""Each part's contract, checked when the parts are built rather than at the first forward: one line naming the
plugin, what it returned and what was expected (:class:`r1v.core.errors.ModelConfigError`).

- vision encoder: an ``nn.Module`` with positive integers ``image_size`` (tile side), ``grid_size`` (patches per
  side) and ``hidden_size``, mapping ``(N, 3, image_size, image_size)`` pixels to ``(N, grid_size, grid_size,
  hidden_size)`` features;
- adapter: an ``nn.Module`` with ``in_features`` (= the encoder's ``hidden_size``), ``out_features`` (= the
  backbone's hidden size) and ``downsample_ratio``, mapping one tile's features to ``(grid_size ·
  downsample_ratio)²`` tokens — the ``<IMG_CONTEXT>`` slots the processor inserts per tile — of width
  ``out_features``.

The output shapes come from a forward on the meta device (shapes only, no arithmetic, no copy of the weights);
a part the meta device cannot run, or one whose parameters ZeRO-3 has partitioned, is checked on its attributes
only.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from r1v.core.errors import ModelConfigError

VISION_ATTRS = ("image_size", "grid_size", "hidden_size")
ADAPTER_ATTRS = ("in_features", "out_features", "downsample_ratio")
DOCS = "see docs/plugins.md"


def shape_only(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The output shape of ``module`` on an input of ``shape``, computed on the meta device; None when that
    cannot be done (ZeRO-3-partitioned parameters, code the meta device cannot run, an output that is not a
    tensor): the first real forward is then the check."""
    params = list(itertools.chain(module.named_parameters(), module.named_buffers()))
    if any(hasattr(t, "ds_id") for _, t in params):  # ZeRO-3 partitions: their shapes are not the real ones
        return None
    dtype = next((t.dtype for _, t in params if t.is_floating_point()), torch.float32)
    meta = {n: torch.empty_like(t, device="meta") for n, t in params}
    try:
        with torch.no_grad():
            out = torch.func.functional_call(module, meta, (torch.empty(shape, device="meta", dtype=dtype),))
    except Exception:  # data-dependent code, .item(), a device check: not the user's mistake, so no error here
        return None
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _positive_int(module: Any, attr: str) -> bool:
    value = getattr(module, attr, None)
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_vision(vision: Any, name: str) -> None:
    """The vision encoder ``name`` built: its attributes, and the shape of its features for one tile."""
    what = f"vision '{name}'"
    if not isinstance(vision, nn.Module):
        raise ModelConfigError(f"{what} returned a {type(vision).__name__}, expected an nn.Module ({DOCS})")
    bad = [a for a in VISION_ATTRS if not _positive_int(vision, a)]
    if bad:
        got = ", ".join(f"{a}={getattr(vision, a, 'missing')!r}" for a in bad)
        raise ModelConfigError(f"{what} returned {type(vision).__name__} with {got}; a vision encoder needs positive "
                               f"integers {', '.join(VISION_ATTRS)} ({DOCS})")  # fmt: skip
    s, g, c = vision.image_size, vision.grid_size, vision.hidden_size
    out = shape_only(vision, (1, 3, s, s))
    if out is not None and out != (1, g, g, c):
        raise ModelConfigError(f"{what} returned features {_shape(out)} for one {s}×{s} tile, expected "
                               f"{_shape((1, g, g, c))} (grid_size {g}, hidden_size {c})")  # fmt: skip


def check_adapter(adapter: Any, name: str, vision: Any, vision_name: str, llm_hidden: int, backbone_name: str) -> None:
    """The adapter ``name`` built between ``vision`` and a backbone of width ``llm_hidden``: its widths, and its
    token count per tile against the one the processor inserts (``(grid_size · downsample_ratio)²``)."""
    what = f"adapter '{name}'"
    if not isinstance(adapter, nn.Module):
        raise ModelConfigError(f"{what} returned a {type(adapter).__name__}, expected an nn.Module ({DOCS})")
    ratio = getattr(adapter, "downsample_ratio", None)
    bad = [a for a in ADAPTER_ATTRS[:2] if not _positive_int(adapter, a)]
    if bad or isinstance(ratio, bool) or not isinstance(ratio, int | float) or ratio <= 0:
        got = ", ".join(f"{a}={getattr(adapter, a, 'missing')!r}" for a in ADAPTER_ATTRS)
        raise ModelConfigError(
            f"{what} returned {type(adapter).__name__} with {got}; an adapter needs positive integers in_features, "
            f"out_features and a positive downsample_ratio ({DOCS})"
        )
    g, c = vision.grid_size, vision.hidden_size
    if adapter.in_features != c:
        raise ModelConfigError(
            f"{what} expects vision features of width {adapter.in_features} but vision '{vision_name}' produces "
            f"width {c}; drop adapter.in_features or pick a matching encoder"
        )
    if adapter.out_features != llm_hidden:
        raise ModelConfigError(f"{what} produces width {adapter.out_features} but backbone '{backbone_name}' has "
                               f"hidden size {llm_hidden}")  # fmt: skip
    side = g * ratio
    if side < 1 or abs(side - round(side)) > 1e-6:
        raise ModelConfigError(
            f"{what}: downsample_ratio {ratio} does not fit the {g}×{g} grid of vision '{vision_name}' "
            f"(grid_size × downsample_ratio = {side:g} must be a whole number ≥ 1)"
        )
    tokens = round(side) ** 2
    out = shape_only(adapter, (1, g, g, c))
    if out is not None and out != (1, tokens, llm_hidden):
        raise ModelConfigError(
            f"{what} returned {_shape(out)} for one tile of {g}×{g}×{c} features (vision '{vision_name}'), expected "
            f"{_shape((1, tokens, llm_hidden))}: ({g} × {ratio:g})² = {tokens} tokens per tile, as many as the "
            f"<IMG_CONTEXT> slots the processor inserts for downsample_ratio {ratio:g}, each of width {llm_hidden} "
            f"(backbone '{backbone_name}')"
        )


AUDIO_ATTRS = ("hidden_size", "n_mels", "sampling_rate", "hop_length", "window_frames", "frames_per_token")


def check_audio(audio: Any, name: str, adapter: Any, adapter_name: str, llm_hidden: int, backbone_name: str) -> None:
    """The audio encoder ``name`` and audio adapter ``adapter_name`` built: their attributes and widths, and the
    shapes of one window's tokens (``ceil(window_frames / frames_per_token)`` of them, the count the processor's
    :func:`r1v.data.audio.tokens_for` assumes for a full window)."""
    what = f"audio '{name}'"
    if not isinstance(audio, nn.Module):
        raise ModelConfigError(f"{what} returned a {type(audio).__name__}, expected an nn.Module ({DOCS})")
    bad = [a for a in AUDIO_ATTRS if not _positive_int(audio, a)]
    if bad:
        got = ", ".join(f"{a}={getattr(audio, a, 'missing')!r}" for a in bad)
        raise ModelConfigError(f"{what} returned {type(audio).__name__} with {got}; an audio encoder needs positive "
                               f"integers {', '.join(AUDIO_ATTRS)} ({DOCS})")  # fmt: skip
    tokens = -(-audio.window_frames // audio.frames_per_token)
    expect = (1, tokens, audio.hidden_size)
    out = shape_only(audio, (1, audio.n_mels, audio.window_frames))
    if out is not None and out != expect:
        raise ModelConfigError(
            f"{what} returned {_shape(out)} for one window of {audio.window_frames} mel frames, expected "
            f"{_shape(expect)} (a token per {audio.frames_per_token} frames)"
        )
    what = f"audio_adapter '{adapter_name}'"
    if not isinstance(adapter, nn.Module) or not all(_positive_int(adapter, a) for a in ADAPTER_ATTRS[:2]):
        raise ModelConfigError(f"{what} returned {type(adapter).__name__}; an audio adapter is an nn.Module with "
                               f"positive integers in_features and out_features ({DOCS})")  # fmt: skip
    if adapter.in_features != audio.hidden_size:
        raise ModelConfigError(f"{what} expects audio features of width {adapter.in_features} but audio '{name}' "
                               f"produces width {audio.hidden_size}; drop audio_adapter.in_features")  # fmt: skip
    if adapter.out_features != llm_hidden:
        raise ModelConfigError(f"{what} produces width {adapter.out_features} but backbone '{backbone_name}' has "
                               f"hidden size {llm_hidden}")  # fmt: skip
    out = shape_only(adapter, (1, tokens, audio.hidden_size))
    if out is not None and out != (1, tokens, llm_hidden):
        raise ModelConfigError(f"{what} returned {_shape(out)} for {tokens} tokens of width {audio.hidden_size}, "
                               f"expected {_shape((1, tokens, llm_hidden))}")  # fmt: skip

"""SigLIP / CLIP towers through transformers: grids, layers, local loading, their own normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from r1v.data.images import preprocess


@pytest.mark.parametrize("name", ["siglip_tiny", "clip_tiny"])
def test_tiny_towers_give_patch_grids(registry, name):
    torch.manual_seed(0)
    tower = registry.build("vision", name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        grid = tower(x)
        out = tower.model(pixel_values=x, output_hidden_states=True)
    assert grid.shape == (2, 8, 8, 64) and tower.grid_size == 8
    layer = out.last_hidden_state if tower.select_layer == -1 else out.hidden_states[tower.select_layer]
    tokens = layer[:, 1:] if name == "clip_tiny" else layer  # CLIP's CLS token is dropped
    assert tokens.shape[1] == 64
    torch.testing.assert_close(grid.reshape(2, 64, 64), tokens)


@pytest.mark.parametrize("zero3", [False, True])
@pytest.mark.parametrize(("kind", "tiny"), [("siglip", "siglip_tiny"), ("clip", "clip_tiny")])
def test_local_folder_loads_the_same_tower(registry, tmp_path, kind, tiny, zero3, monkeypatch):
    """Also along the ZeRO-3 path (simulated on CPU: built from the config, tensors streamed in)."""
    import r1v.runtime.weights

    torch.manual_seed(0)
    a = registry.build("vision", tiny).eval()
    a.model.save_pretrained(tmp_path)
    monkeypatch.setattr(r1v.runtime.weights, "zero3_active", lambda: zero3)
    b = registry.build("vision", kind, pretrained=str(tmp_path), select_layer=a.select_layer).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        registry.build("vision", kind, pretrained=str(tmp_path / "missing"))


def test_vlm_uses_the_towers_statistics(registry, compose):
    from r1v.data.synthetic import generate
    from r1v.model.build import build

    model, proc = build(compose("vision=siglip_tiny")["model"], registry)
    assert proc.image_mean == (0.5, 0.5, 0.5) and proc.image_std == (0.5, 0.5, 0.5)
    s, _ = generate(0, "val")
    batch = proc.collate([proc.encode(s, "answer")])
    assert torch.isfinite(
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"]).loss
    )


def test_tile_pixels_equal_a_direct_computation():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8))  # 128 wide, 64 high
    tiles = preprocess(img, 64, max_tiles=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert tiles.shape == (3, 3, 64, 64)  # a 2×1 grid + thumbnail
    resized = np.asarray(img.resize((128, 64), Image.BICUBIC), dtype=np.float32) / 255.0
    thumb = np.asarray(img.resize((64, 64), Image.BICUBIC), dtype=np.float32) / 255.0
    expected = [resized[:, :64], resized[:, 64:], thumb]
    for tile, ref in zip(tiles, expected, strict=True):
        torch.testing.assert_close(tile, torch.from_numpy((ref - 0.5) / 0.25).permute(2, 0, 1))

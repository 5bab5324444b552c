"""Image preprocessing: InternVL dynamic tiling and normalisation.

``tile_image`` picks the grid (i, j) with 1 ≤ i·j ≤ max_tiles whose aspect ratio is closest to the
image's (on a tie it prefers the larger grid when the image is big enough to fill it), resizes to
(S·i, S·j), cuts i·j tiles row-major and, when there is more than one tile, appends a thumbnail.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def candidate_grids(max_tiles: int) -> list[tuple[int, int]]:
    grids = {(i, j) for n in range(1, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if 1 <= i * j <= max_tiles}  # fmt: skip
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_grid(width: int, height: int, tile: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) as InternVL's find_closest_aspect_ratio."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB the way a viewer shows it: EXIF orientation applied, transparency over
    white (not the hidden colour of transparent pixels), 16-bit and 32-bit greyscale scaled (not clipped) to
    8 bits, palette / greyscale / CMYK converted."""
    import numpy as np
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) <= 65535) else max(a.max(), 1)
        if mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def tile_image(image: Image.Image, tile: int, max_tiles: int = 1, use_thumbnail: bool = True) -> list[Image.Image]:
    image = to_rgb(image) if image.mode != "RGB" else image
    cols, rows = choose_grid(image.width, image.height, tile, max_tiles)
    resized = image.resize((tile * cols, tile * rows), Image.BICUBIC)
    tiles = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
             for r in range(rows) for c in range(cols)]  # fmt: skip
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile, tile), Image.BICUBIC))
    return tiles


def to_tensor(tiles: list[Image.Image], mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:  # fmt: skip
    """Tiles -> normalised (n_tiles, 3, S, S) float tensor."""
    return torch.stack([TF.normalize(TF.to_tensor(t), mean, std) for t in tiles])


def preprocess(
    image: Image.Image,
    tile: int,
    max_tiles: int = 1,
    use_thumbnail: bool = True,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """One image -> (n_tiles, 3, tile, tile): InternVL dynamic tiling, then normalisation with the
    encoder's statistics (ImageNet for InternViT and the tiny ViT; SigLIP and CLIP bring their own)."""
    return to_tensor(tile_image(image, tile, max_tiles, use_thumbnail), mean, std)

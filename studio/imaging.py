"""Small PIL helpers for showing tiny images: nearest-neighbour upscaling and a preview grid."""

from __future__ import annotations

import math

from PIL import Image


def upscale(image: Image.Image, target: int = 256) -> Image.Image:
    """Scale by a whole factor with nearest neighbour, so the longer side is about `target` px and pixels stay sharp."""
    factor = max(1, round(target / max(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def grid(images: list[Image.Image], columns: int = 4, gap: int = 2) -> Image.Image:
    """Tile same-sized images row by row on a dark background."""
    if not images:
        raise ValueError("grid needs at least one image")
    width, height = images[0].size
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), (24, 24, 27))
    for i, image in enumerate(images):
        row, col = divmod(i, columns)
        sheet.paste(image.convert("RGB"), (col * (width + gap), row * (height + gap)))
    return sheet

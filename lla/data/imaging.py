"""Image arrays in and out: a decoded PIL image of any size and mode as a square uint8 array;
uint8 arrays as a grid image and a PNG file."""

from __future__ import annotations

import math
import pathlib

import numpy as np
from PIL import Image

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def square_array(image: Image.Image, resolution: int, channels: int,
                 resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """Centre-crops `image` to a square and resizes it: uint8 `[resolution, resolution, channels]`.

    Any mode is accepted: transparency is composited over white, 16-bit grey is scaled to
    8 bits, palette/CMYK/grey/... are converted to RGB (`channels=3`) or grey (`channels=1`).
    Downscaling with PIL's BICUBIC/BILINEAR filters is antialiased.
    """
    image = eight_bit(image, "RGB" if channels == 3 else "L")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if width != height:
        image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), resample)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def eight_bit(image: Image.Image, mode: str) -> Image.Image:
    """`image` converted to 8-bit `mode` ("RGB" or "L"), transparency flattened onto white."""
    if image.mode.startswith("I;16"):
        grey = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(np.round(grey).astype(np.uint8))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image if image.mode == mode else image.convert(mode)


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """uint8 [n, H, W, C] -> one uint8 [rows·H, columns·W, C] image (row-major, black fill)."""
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * height, columns * width, channels), np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * height:(row + 1) * height, column * width:(column + 1) * width] = image
    return grid


def save_png(image: np.ndarray, path: str | pathlib.Path) -> pathlib.Path:
    """Writes uint8 [H, W, C] (C = 1 or 3) to `path`, creating folders; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    return path

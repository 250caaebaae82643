"""Turning a decoded PIL image of any size and mode into a square uint8 array."""

from __future__ import annotations

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

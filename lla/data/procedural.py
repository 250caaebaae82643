"""Procedural shapes: the embedded default dataset (no files, no network) and its statistic.

Each image is one soft-edged shape on a linear two-colour gradient. The class fixes both the
shape and the hue, so a sample can be judged by eye ("a red disc") and by `shape_statistics`:

    class  0 red disc      1 orange square   2 yellow-green triangle   3 green ring
           4 mint cross    5 cyan disc       6 azure square            7 blue triangle
           8 purple ring   9 magenta cross

Per example (from `numpy.random.default_rng(index)`): class, centre (|cx|, |cy| <= 0.42 in
[-1, 1] image coordinates), size (circumradius 0.25-0.42), rotation, hue jitter +-0.02,
saturation and value 0.7-1 for the shape; a gradient direction and two low-saturation
background colours on the same side (darker or lighter) of the shape's luma, at least 0.3
away. Geometry is in image coordinates, so one index draws the same picture at every
resolution; edges are ramps of width max(0.03, one pixel).
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import math

import numpy as np

from lla.data.base import check_geometry

NUM_CLASSES = 10
SHAPES = ("disc", "square", "triangle", "ring", "cross")
CLASS_HUES = np.arange(NUM_CLASSES) / NUM_CLASSES
MAX_CENTRE, SIZE_RANGE, HUE_JITTER = 0.42, (0.25, 0.42), 0.02
BORDER = 0.92  # shapes never reach |x| or |y| > BORDER: that frame is pure background
# `shape_statistics` needs this many pixels a side: below, shapes reach the outermost pixels.
MIN_STATISTICS_RESOLUTION = 8
FOREGROUND_THRESHOLD = 0.2  # in [-1, 1] units; shapes differ from background by >= ~0.4
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class ProceduralShapes:
    """Infinite labelled procedural images; `example(index)` is a pure function of `index`.

    Shapes: `example` -> (uint8 `[resolution, resolution, channels]`, label in [0, 10)).
    A 64x64 image takes ~0.4 ms, 256x256 ~3 ms, 512x512 ~12 ms on one CPU core.
    """

    resolution: int = 64
    channels: int = 3
    num_examples: int | None = dataclasses.field(default=None, init=False)
    num_classes: int = dataclasses.field(default=NUM_CLASSES, init=False)

    def __post_init__(self):
        check_geometry(self.resolution, self.channels)

    @staticmethod
    def sample_statistics(images: np.ndarray) -> dict[str, float]:
        """How much generated images (float [n, H, H, C] in [-1, 1]) look like this data:
        `shape_statistics`; none (an empty dict) below `MIN_STATISTICS_RESOLUTION` pixels,
        where it is undefined, so small runs still train."""
        if np.shape(images)[1] < MIN_STATISTICS_RESOLUTION:
            return {}
        return shape_statistics(images)

    def example(self, index: int) -> tuple[np.ndarray, int]:
        """(image uint8 [R, R, C], label in [0, 10)): a pure function of `index`."""
        rng = np.random.default_rng(index)
        label = int(rng.integers(NUM_CLASSES))
        cx, cy = rng.uniform(-MAX_CENTRE, MAX_CENTRE, 2).tolist()
        size, angle = rng.uniform(*SIZE_RANGE), rng.uniform(0, 2 * math.pi)
        hue = (CLASS_HUES[label] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
        colour = np.asarray(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0),
                                                rng.uniform(0.7, 1.0)), np.float32)
        start, end = background_colours(rng, float(colour @ LUMA))
        direction = rng.uniform(0, 2 * math.pi)

        x, y = pixel_grid(self.resolution)
        ramp = (x * math.cos(direction) + y * math.sin(direction)) / (2 * math.sqrt(2)) + 0.5
        cos, sin = math.cos(angle), math.sin(angle)
        u = cos * x + sin * y - (cos * cx + sin * cy)
        v = cos * y - sin * x - (cos * cy - sin * cx)
        distance = signed_distance(SHAPES[label % len(SHAPES)], u, v, size)
        alpha = np.clip(0.5 - distance / max(0.03, 2.0 / self.resolution), 0.0, 1.0)
        # background = start + (end - start) * ramp; image = background * (1 - alpha) +
        # colour * alpha, written as one [R*R, 4] @ [4, C] product.
        mix = np.stack([start, end - start, colour - start, start - end])
        if self.channels == 1:
            mix = mix @ LUMA[:, None]
        features = np.stack([np.ones_like(ramp), ramp, alpha, ramp * alpha], axis=-1)
        image = features @ (mix * 255) + 0.5
        return image.astype(np.uint8), label


def background_colours(rng: np.random.Generator, shape_luma: float) -> np.ndarray:
    """Two gradient end colours, float32 `[2, 3]`: greys in [0.1, 0.8] tinted towards a random
    hue by at most 20% at unchanged luma, both darker or both lighter than the shape by >= 0.3,
    so the shape stands out in RGB and in grey."""
    darker = (0.1, shape_luma - 0.3)
    lighter = (shape_luma + 0.3, 0.8)
    sides = [side for side in (darker, lighter) if side[0] < side[1]]
    greys = rng.uniform(*sides[rng.integers(len(sides))], size=2)
    hues = [colorsys.hsv_to_rgb(h, 1.0, 1.0) for h in rng.uniform(size=2)]
    tinted = 1 - rng.uniform(0.0, 0.2, size=(2, 1)) * (1 - np.asarray(hues))
    return (tinted * (greys / (tinted @ LUMA))[:, None]).astype(np.float32)


@functools.lru_cache(maxsize=8)
def pixel_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x right, y down) in [-1, 1]: two float32 `[R, R]`."""
    axis = ((np.arange(resolution, dtype=np.float32) + 0.5) / resolution) * 2 - 1
    x, y = np.meshgrid(axis, axis)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def box_distance(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    """Signed distance to an axis-aligned box centred at the origin."""
    qu, qv = np.abs(u) - half_u, np.abs(v) - half_v
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0)


def signed_distance(shape: str, u: np.ndarray, v: np.ndarray, size: float) -> np.ndarray:
    """Signed distance (negative inside) to `shape` of circumradius ~`size` at the origin."""
    if shape == "disc":
        return np.hypot(u, v) - size
    if shape == "square":
        return box_distance(u, v, size / np.sqrt(2), size / np.sqrt(2))
    if shape == "triangle":  # intersection of three half-planes, inradius size / 2
        normals = [(np.cos(a), np.sin(a)) for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
        return np.max([u * nu + v * nv for nu, nv in normals], axis=0) - size / 2
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.75 * size) - 0.25 * size
    if shape == "cross":
        return np.minimum(box_distance(u, v, size, size / 3), box_distance(u, v, size / 3, size))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def rgb_hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in [0, 1) of colours `[..., 3]` in [0, 1] (0 red, 1/3 green, 2/3 blue)."""
    r, g, b = np.moveaxis(rgb, -1, 0)
    top, spread = rgb.max(-1), np.maximum(np.ptp(rgb, axis=-1), 1e-6)
    hue = np.where(top == r, (g - b) / spread,
                   np.where(top == g, 2 + (b - r) / spread, 4 + (r - g) / spread))
    return (hue / 6) % 1.0


def frame_mask(resolution: int) -> np.ndarray:
    """The background frame, bool `[R * R]`: the pixels whose centres lie beyond `BORDER`
    (|x| or |y| > 0.92), or, at R <= 12, where no centre does, the outermost ring of pixels
    (centres at |x| or |y| = 1 - 1/R). A shape's edge reaches that ring in a few images (5%
    at 8 px, 1% at 10, 0.2% at 12; more below 8 px), too little to move the data's
    statistics: valid_fraction >= 0.99 from 8 px on.
    """
    x, y = pixel_grid(resolution)
    outermost = 1 - 1 / resolution
    limit = BORDER if outermost > BORDER else outermost - 1 / resolution
    return ((np.abs(x) > limit) | (np.abs(y) > limit)).reshape(-1)


def background_residual(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far each pixel is from the background, for float images `[n, H, H, C]`.

    Returns the residual float32 `[n, H * H, C]` from the plane (`a + b x + c y`) fitted by
    least squares to each image's and channel's outer frame (`frame_mask`), and that frame
    as a mask bool `[H * H]`.

    Raises:
      ValueError: images not square, or smaller than `MIN_STATISTICS_RESOLUTION`.
    """
    n, height, width, channels = images.shape
    if height != width:
        raise ValueError(f"images must be square [n, H, H, C], got {images.shape}")
    if height < MIN_STATISTICS_RESOLUTION:
        raise ValueError(f"shape statistics need images of >= {MIN_STATISTICS_RESOLUTION} x "
                         f"{MIN_STATISTICS_RESOLUTION} pixels (smaller shapes reach the "
                         f"outermost pixels, taken for background); got {height} x {width}")
    x, y = pixel_grid(height)
    design = np.stack([np.ones_like(x), x, y], -1).reshape(-1, 3)
    border = frame_mask(height)
    pixels = images.reshape(n, -1, channels)
    frame = pixels[:, border].transpose(1, 0, 2).reshape(int(border.sum()), -1)
    coefficients = np.linalg.lstsq(design[border], frame, rcond=None)[0]
    plane = (design @ coefficients).reshape(-1, n, channels).transpose(1, 0, 2)
    return pixels - plane, border


def shape_statistics(images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """How much `images` look like `ProceduralShapes`: a cheap check for generated samples.

    Args:
      images: float `[n, H, H, C]` in [-1, 1] (what `batches` yields and models produce).
      labels: optional int `[n]`, the classes the images should show (class-conditional
        sampling); only used for RGB images.

    Returns (means over the n images):
      background_rmse: RMS distance of the outer frame (|x| or |y| > 0.92, the outermost
        pixels at <= 12 px: `frame_mask`) from its own least-squares plane per channel.
        Data ~0.002 (uint8 rounding); data plus Gaussian noise of std s ~s (residual noise
        in under-trained samples); uniform noise ~0.58.
      coverage: fraction of pixels more than 0.2 from the background plane in some channel
        (the shape). Data ~0.07 (0.02-0.15 per image); uniform noise ~0.85; flat images 0.
      valid_fraction: fraction of images with background_rmse < 0.05 and coverage in
        [0.01, 0.3]. Data 1.0; noise 0.0.
      label_accuracy (with `labels`, RGB only): fraction whose shape hue is nearest to the
        hue of their class. Data 1.0; noise or unconditional samples ~0.1 (chance).

    Raises:
      ValueError: images not square, or smaller than `MIN_STATISTICS_RESOLUTION` (8) pixels.
    """
    images = np.asarray(images, np.float32)
    pixels = images.reshape(len(images), -1, images.shape[-1])
    residual, border = background_residual(images)
    background_rmse = np.sqrt(np.mean(residual[:, border] ** 2, axis=(1, 2)))
    distance = np.abs(residual).max(-1)
    coverage = np.mean(distance > FOREGROUND_THRESHOLD, axis=1)
    valid = (background_rmse < 0.05) & (coverage >= 0.01) & (coverage <= 0.3)
    stats = {"background_rmse": float(background_rmse.mean()), "coverage": float(coverage.mean()),
             "valid_fraction": float(valid.mean())}
    if labels is not None and images.shape[-1] == 3:
        core = distance > np.maximum(0.5 * distance.max(1, keepdims=True), FOREGROUND_THRESHOLD)
        weight = core / np.maximum(core.sum(1, keepdims=True), 1)
        mean_colour = np.einsum("np,npc->nc", weight, pixels) * 0.5 + 0.5
        gap = np.abs(rgb_hue(mean_colour)[:, None] - CLASS_HUES[None, :])
        predicted = np.argmin(np.minimum(gap, 1 - gap), axis=1)
        stats["label_accuracy"] = float(np.mean(predicted == np.asarray(labels)))
    return stats

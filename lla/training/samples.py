"""Sample grids from a diffusion model, as arrays and PNG files."""

from __future__ import annotations

import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from lla.diffusion import sampling


def make_sampler(model: nn.Module, *, count: int, scale: float, steps: int,
                 guidance_scale: float = 1.0):
    """Returns jitted `sample(params, key) -> uint8 [count, H, W, C]` (Euler, `steps` model
    evaluations; class-conditional models get labels 0, 1, 2, ... cycling)."""
    shape = (count, model.resolution, model.resolution, model.channels)
    labels = jnp.arange(count) % model.num_classes if model.num_classes else None

    @jax.jit
    def sample(params, key):
        def apply(x, timesteps, labels):
            return model.apply(params, x, timesteps, labels)
        images = sampling.euler_sample(
            apply, key, shape, scale=scale, steps=steps, labels=labels,
            guidance_scale=guidance_scale,
            null_label=model.num_classes if model.num_classes else None)
        return sampling.to_uint8(images)

    return sample


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

"""Per-image similarity of predicted frames to the truth: MSE, PSNR and SSIM.

Images are float [..., H, W, C] in [-1, 1] (the data pipelines' scale); every metric first
maps them to [0, 1] (x / 2 + 1/2), the scale video-prediction papers report on, and reduces
over H, W, C only, so `[B, T, H, W, C]` gives one value per clip and frame, `[B, T]`.

    mse   mean squared error per pixel on [0, 1].
    psnr  10 log10(1 / mse) dB (peak 1); identical images give +inf.
    ssim  the structural similarity of Wang et al. (2004) as tf.image.ssim computes it:
          11 x 11 Gaussian window (sigma 1.5), "valid" windows only, constants
          C1 = (0.01)^2, C2 = (0.03)^2, channels averaged; 1 for identical images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def unit_scale(images: jax.Array) -> jax.Array:
    """[-1, 1] -> [0, 1] in float32."""
    return images.astype(jnp.float32) / 2 + 0.5


def mse(prediction: jax.Array, truth: jax.Array) -> jax.Array:
    """Mean squared error per pixel on [0, 1]: [..., H, W, C] pairs -> [...]."""
    return jnp.mean((unit_scale(prediction) - unit_scale(truth)) ** 2, axis=(-3, -2, -1))


def psnr(prediction: jax.Array, truth: jax.Array) -> jax.Array:
    """Peak signal-to-noise ratio in dB (peak 1 on [0, 1]): [..., H, W, C] pairs -> [...]."""
    return -10.0 * jnp.log10(mse(prediction, truth))


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian float32 [size] (the 2-D window is its outer product)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return (weights / weights.sum()).astype(np.float32)


def _local_mean(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Gaussian-weighted means of the valid windows: [N, H, W] -> [N, H - k + 1, W - k + 1]."""
    k = len(window)
    rows = sum(window[i] * x[:, i:x.shape[1] - k + 1 + i] for i in range(k))
    return sum(window[j] * rows[:, :, j:rows.shape[2] - k + 1 + j] for j in range(k))


def ssim(prediction: jax.Array, truth: jax.Array) -> jax.Array:
    """Structural similarity (module docstring): [..., H, W, C] pairs -> [...].

    Raises:
      ValueError: H or W smaller than the 11-pixel window.
    """
    *batch, height, width, channels = truth.shape
    if min(height, width) < WINDOW:
        raise ValueError(f"ssim needs images of at least {WINDOW} x {WINDOW} pixels (its "
                         f"window); got {height} x {width}")
    window = gaussian_window()
    # One image plane per (batch element, channel): [N, H, W].
    x, y = (jnp.moveaxis(unit_scale(a).reshape(-1, height, width, channels), -1, 1)
            .reshape(-1, height, width) for a in (prediction, truth))
    mean_x, mean_y = _local_mean(x, window), _local_mean(y, window)
    var_x = _local_mean(x * x, window) - mean_x ** 2
    var_y = _local_mean(y * y, window) - mean_y ** 2
    cov = _local_mean(x * y, window) - mean_x * mean_y
    c1, c2 = K1 ** 2, K2 ** 2
    index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / (
        (mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))
    per_plane = index.mean(axis=(1, 2))
    return per_plane.reshape(*batch, channels).mean(-1)

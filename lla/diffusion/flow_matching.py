"""Rectified-flow training: noising path, velocity target and the MSE loss (LLSA paper §3.2).

Images are NHWC in [-1, 1]. Noise level sigma in (0, 1]; the model sees timesteps = sigma * T
with T = `num_train_timesteps` (1000). The noise is rescaled by s = `noise_scale(resolution)`:

    x_t    = (1 - sigma) * x0 + sigma * s * eps,      eps ~ N(0, I)
    target = d x_t / d sigma = s * eps - x0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# apply_fn(x_t [B, H, W, C], timesteps f32 [B], labels int [B] | None) -> velocity [B, H, W, C]
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


def noise_scale(resolution: int) -> float:
    """Resolution noise rescale s = max(1, resolution / 64): 1 at <= 64, 2 at 128, 4 at 256."""
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return max(1.0, resolution / 64)


def sample_sigma(key: jax.Array, batch: int, num_train_timesteps: int = 1000) -> jax.Array:
    """f32 [batch], uniform over the discrete noise levels {1/T, 2/T, ..., 1}."""
    steps = jax.random.randint(key, (batch,), 1, num_train_timesteps + 1)
    return steps.astype(jnp.float32) / num_train_timesteps


def _per_example(sigma: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes sigma [B] (or a scalar) to broadcast over x [B, ...]."""
    sigma = jnp.asarray(sigma, jnp.float32)
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def interpolate(x0: jax.Array, noise: jax.Array, sigma: jax.Array, scale: float) -> jax.Array:
    """x_t = (1 - sigma) * x0 + sigma * scale * noise; x0, noise [B, H, W, C], sigma [B]."""
    sigma = _per_example(sigma, x0)
    return (1.0 - sigma) * x0 + sigma * scale * noise


def velocity_target(x0: jax.Array, noise: jax.Array, scale: float) -> jax.Array:
    """The flow's velocity d x_t / d sigma = scale * noise - x0, shape of x0."""
    return scale * noise - x0


def loss(
    apply_fn: VelocityFn,
    x0: jax.Array,
    key: jax.Array,
    *,
    scale: float,
    labels: jax.Array | None = None,
    num_train_timesteps: int = 1000,
) -> tuple[jax.Array, dict[str, Any]]:
    """Flow-matching loss: plain mean-squared error of the predicted velocity, in float32.

    Args:
      apply_fn: the model, `apply_fn(x_t, timesteps, labels) -> velocity [B, H, W, C]`.
      x0: clean images [B, H, W, C] in [-1, 1].
      key: split as `sigma_key, noise_key = jax.random.split(key)`; then
        `sigma = sample_sigma(sigma_key, B, num_train_timesteps)` and
        `noise = jax.random.normal(noise_key, x0.shape, jnp.float32)`.
      scale: the noise rescale s (`noise_scale(resolution)`).
      labels: optional int [B] class labels, passed to `apply_fn` unchanged.
      num_train_timesteps: T; the model's timesteps are sigma * T (f32 [B]).

    Returns:
      (scalar mean over all elements, {"sigma": f32 [B], "per_example_loss": f32 [B]}).
    """
    sigma_key, noise_key = jax.random.split(key)
    x0 = x0.astype(jnp.float32)
    sigma = sample_sigma(sigma_key, x0.shape[0], num_train_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    x_t = interpolate(x0, noise, sigma, scale)
    prediction = apply_fn(x_t, sigma * num_train_timesteps, labels)
    squared_error = jnp.square(prediction.astype(jnp.float32) - velocity_target(x0, noise, scale))
    per_example = jnp.mean(squared_error, axis=tuple(range(1, x0.ndim)))
    return jnp.mean(squared_error), {"sigma": sigma, "per_example_loss": per_example}

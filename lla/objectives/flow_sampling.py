"""Euler sampler for the flow of `flow_matching`, with optional classifier-free guidance.

Integrates d x / d sigma = v(x, sigma * T) from sigma = 1 (x = s * eps) down to sigma = 0 over
the grid linspace(1, sigma_min, steps) followed by 0: x <- x + (sigma_next - sigma) * v.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# apply_fn(x_t [B, H, W, C], timesteps f32 [B], labels int [B] | None) -> velocity [B, H, W, C]
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


def _guided_velocity(
    apply_fn: VelocityFn,
    labels: jax.Array | None,
    guidance_scale: float,
    null_label: int | None,
) -> VelocityFn:
    """v(x, t) for the sampler: conditional (or unconditional) model, or CFG in one call.

    With guidance g != 1, v = v_uncond + g * (v_cond - v_uncond), where v_uncond sees
    `null_label`; both halves are evaluated in a single model call on a batch of 2B.
    """
    if guidance_scale == 1.0:
        return lambda x, t: apply_fn(x, t, labels)
    if labels is None or null_label is None:
        raise ValueError("classifier-free guidance (guidance_scale != 1) needs labels and "
                         "null_label")
    both_labels = jnp.concatenate([labels, jnp.full_like(labels, null_label)])

    def velocity(x: jax.Array, t: jax.Array) -> jax.Array:
        both = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both_labels)
        v_cond, v_uncond = jnp.split(both, 2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    return velocity


def euler_sample(
    apply_fn: VelocityFn,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    scale: float,
    steps: int = 20,
    labels: jax.Array | None = None,
    guidance_scale: float = 1.0,
    null_label: int | None = None,
    num_train_timesteps: int = 1000,
    sigma_min: float = 0.001,
) -> jax.Array:
    """Samples images f32 `shape` = [B, H, W, C] with `steps` model evaluations (2B-batched
    under guidance). Not clipped: see `to_uint8`.

    Args:
      apply_fn: the model, `apply_fn(x [B', H, W, C], timesteps f32 [B'], labels) -> velocity`.
      key: draws the initial x = scale * N(0, I).
      shape: [B, H, W, C]; static.
      scale: the noise rescale s used in training.
      steps: number of Euler steps (static), over linspace(1, sigma_min, steps) then 0.
      labels: optional int [B], passed to the model.
      guidance_scale: classifier-free guidance g (a Python float); 1 disables it.
      null_label: the label id the model reserves for "no label"; needed when g != 1.
      num_train_timesteps: T; the model sees timesteps sigma * T.
      sigma_min: the last nonzero noise level.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if labels is not None and labels.shape != (shape[0],):
        raise ValueError(f"labels must have shape ({shape[0]},), got {labels.shape}")
    velocity = _guided_velocity(apply_fn, labels, guidance_scale, null_label)
    sigmas = jnp.append(jnp.linspace(1.0, sigma_min, steps, dtype=jnp.float32), 0.0)

    def step(i: jax.Array, x: jax.Array) -> jax.Array:
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        timesteps = jnp.full((shape[0],), sigma * num_train_timesteps, jnp.float32)
        return x + (sigma_next - sigma) * velocity(x, timesteps).astype(jnp.float32)

    x = scale * jax.random.normal(key, shape, jnp.float32)
    return jax.lax.fori_loop(0, steps, step, x)


def to_uint8(images: jax.Array) -> jax.Array:
    """Images [..., H, W, C] in [-1, 1] (clipped first) -> uint8 in [0, 255], for PNGs."""
    pixels = jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5)
    return pixels.astype(jnp.uint8)

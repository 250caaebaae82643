"""Rotary position embeddings (RoPE) for 2-D token grids, interleaved-pair convention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rope_2d(positions: np.ndarray, head_dim: int, theta: float = 10000.0):
    """Rotation angles for 2-D positions: the first half of each head rotates with the row
    (y), the second half with the column (x).

    Args:
      positions: [N, 2] (y, x) per token, in the order the tokens are fed to attention.
      head_dim: D, a multiple of 4.
      theta: RoPE base.

    Returns:
      (cos, sin), each float32 [N, D / 2]: one angle per interleaved (even, odd) pair.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4; got {head_dim}")
    quarter = head_dim // 4
    inverse_frequency = theta ** (-np.arange(quarter, dtype=np.float64) / quarter)
    angles = np.concatenate([positions[:, :1] * inverse_frequency,
                             positions[:, 1:2] * inverse_frequency], axis=1)
    return jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates each interleaved pair (x[2i], x[2i+1]) of x [B, N, H, D] by its angle
    (cos, sin [N, D / 2]); computed in float32, returned in x's dtype."""
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)

"""Rotary position embeddings (RoPE) for sequences and 2-D and 3-D token grids, interleaved-pair
convention: pair i of a head is (x[2i], x[2i+1])."""

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


def rope_1d(positions: jax.Array, head_dim: int, theta: float = 10000.0):
    """Rotation angles for 1-D positions: pair i of every head turns by
    position · theta^(-i / (D/2)).

    Args:
      positions: integer [..., N] (e.g. [N], or [B, N] for packed sequences); may be traced.
      head_dim: D, even.
      theta: RoPE base.

    Returns:
      (cos, sin), each float32 [..., N, D / 2] (angles computed in float32).
    """
    if head_dim % 2:
        raise ValueError(f"1-D RoPE needs an even head_dim; got {head_dim}")
    half = head_dim // 2
    inverse_frequency = jnp.asarray(theta ** (-np.arange(half, dtype=np.float64) / half),
                                    jnp.float32)
    angles = jnp.asarray(positions, jnp.float32)[..., None] * inverse_frequency
    return jnp.cos(angles), jnp.sin(angles)


def rope_3d(positions: np.ndarray, head_dim: int, theta: float = 10000.0):
    """Rotation angles for (t, y, x) positions: pairs split between time, rows and columns.

    Each spatial axis gets 2·⌊D/6⌋ of the head's dims, time the remaining D − 4·⌊D/6⌋ (the
    first pairs), each axis with 1-D RoPE frequencies over its own dims (`rope_1d`).

    Args:
      positions: [N, 3] (t, y, x) per token, in the order the tokens are fed to attention.
      head_dim: D, even and >= 6.
      theta: RoPE base.

    Returns:
      (cos, sin), each float32 [N, D / 2].
    """
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3-D RoPE needs an even head_dim >= 6 (one pair per axis at least); "
                         f"got {head_dim}")
    spatial = 2 * (head_dim // 6)
    dims = (head_dim - 2 * spatial, spatial, spatial)
    angles = [rope_1d(positions[:, axis], dim, theta) for axis, dim in enumerate(dims)]
    return (jnp.concatenate([cos for cos, _ in angles], axis=-1),
            jnp.concatenate([sin for _, sin in angles], axis=-1))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates each interleaved pair (x[2i], x[2i+1]) of x [B, N, H, D] by its angle:
    cos, sin [N, D / 2] (the same positions for every batch row) or [B, N, D / 2] (per-row
    positions, e.g. packed sequences). Computed in float32, returned in x's dtype."""
    batch, tokens, _, head_dim = x.shape
    if cos.shape not in ((tokens, head_dim // 2), (batch, tokens, head_dim // 2)) \
            or sin.shape != cos.shape:
        raise ValueError(f"apply_rope: cos and sin must be [N, D/2] = ({tokens}, "
                         f"{head_dim // 2}) or [B, N, D/2] = ({batch}, {tokens}, "
                         f"{head_dim // 2}) for x of shape {tuple(x.shape)}; got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)

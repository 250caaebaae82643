"""Transformer feed-forward block."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Mlp(nn.Module):
    """[..., width] -> [..., width]: Dense(ratio·width), GELU (tanh), Dense(width)."""

    width: int
    ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(int(self.width * self.ratio), dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=True)
        return nn.Dense(self.width, dtype=self.dtype, name="fc2")(x)

"""Adaptive layer norm (adaLN-Zero) conditioning, as in DiT."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x [B, N, C] * (1 + scale [B, C]) + shift [B, C]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNModulation(nn.Module):
    """condition [B, C] -> `count` vectors [B, width] from SiLU + one zero-initialised Dense
    (so a fresh block starts as the identity: adaLN-Zero)."""

    width: int
    count: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, condition: jax.Array) -> list[jax.Array]:
        out = nn.Dense(self.count * self.width, dtype=self.dtype, name="linear",
                       kernel_init=nn.initializers.zeros)(nn.silu(condition))
        return jnp.split(out, self.count, axis=-1)


def layer_norm(x: jax.Array) -> jax.Array:
    """LayerNorm over the last axis without learnable scale or bias (eps 1e-6), computed in
    float32 and returned in x's dtype."""
    wide = x.astype(jnp.float32)
    mean = wide.mean(-1, keepdims=True)
    variance = jnp.square(wide - mean).mean(-1, keepdims=True)
    return ((wide - mean) * jax.lax.rsqrt(variance + 1e-6)).astype(x.dtype)

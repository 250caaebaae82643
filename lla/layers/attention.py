"""Multi-head self-attention layer over any registered attention op."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import lla.attention as attention
from lla.layers.rope import apply_rope


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis with a learnable scale (eps 1e-5)."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        wide = x.astype(jnp.float32)
        normed = wide * jax.lax.rsqrt(jnp.square(wide).mean(-1, keepdims=True) + self.epsilon)
        return (normed * scale).astype(x.dtype)


class Attention(nn.Module):
    """x [B, N, C] -> [B, N, C]: q, k, v projections (with bias), per-head RMS qk-norm,
    optional RoPE, the registered op `op` (called with `op_kwargs`), output projection.

    Attributes:
      num_heads: H; C must be divisible by it (head_dim = C / H).
      op: name in `lla.attention.names()`, e.g. "dense" or "llsa".
      op_kwargs: static keyword arguments for the op (block_size, topk, implementation...).
      qk_norm: RMS-normalise q and k per head before RoPE.
    """

    num_heads: int
    op: str = "dense"
    op_kwargs: Mapping[str, Any] = None
    qk_norm: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None = None):
        batch, tokens, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"Attention: width {width} is not divisible by num_heads "
                             f"{self.num_heads}")
        head_dim = width // self.num_heads
        shape = (batch, tokens, self.num_heads, head_dim)
        q, k, v = (nn.Dense(width, dtype=self.dtype, name=name)(x).reshape(shape)
                   for name in ("query", "key", "value"))
        if self.qk_norm:
            q, k = RMSNorm(name="query_norm")(q), RMSNorm(name="key_norm")(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attention.get(self.op)(q, k, v, **dict(self.op_kwargs or {}))
        return nn.Dense(width, dtype=self.dtype, name="out")(out.reshape(batch, tokens, width))

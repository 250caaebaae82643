"""VSA's coarse (compression) branch: attention between mean-pooled tiles, broadcast back.

Every tile of B tokens (the last one partial) is pooled to the mean of its queries, keys and
values; pooled query tile b attends, with scale 1/sqrt(D), to all pooled key tiles (one
softmax, weight 1 each), and its output is copied to each of its B query tokens. Its scores
also rank the key tiles for the fine branch, the same ranking as `topk_block`'s selection
(the scale does not change an order). Differentiable in q, k and v through the pooling; the
work is (N / B)^2 per head, no N x N array.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lla.attention.common.block_sparse import block_means


def coarse_attention(q: jax.Array, k: jax.Array, v: jax.Array, block_size: int) -> jax.Array:
    """q [Bt, Nq, H, D], k, v [Bt, Nk, Hkv, D] -> float32 [Bt, Nq, H, D]."""
    heads, q_tokens = q.shape[2], q.shape[1]
    group = heads // k.shape[2]
    q_tiles = block_means(q, block_size)
    k_tiles = jnp.repeat(block_means(k, block_size), group, axis=2)
    v_tiles = jnp.repeat(block_means(v, block_size), group, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q_tiles, k_tiles) * q.shape[-1] ** -0.5
    tiles = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v_tiles)
    return jnp.repeat(tiles, block_size, axis=1)[:, :q_tokens]


def with_coarse(fine: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array,
                block_size: int) -> jax.Array:
    """VSA's output: the fine branch [Bt, Nq, H, D] plus the coarse one, in q's dtype."""
    return (fine.astype(jnp.float32) + coarse_attention(q, k, v, block_size)).astype(q.dtype)

"""ASA_GT's global tokens: keys and values mean-pooled over windows of n consecutive tokens
(the last window partial), always visible with logit bias ln(count) (seed-papers K2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lla.attention.common.block_sparse import Summary, block_means, block_sizes


def global_tokens(k: jax.Array, v: jax.Array, pool: int) -> Summary:
    """k, v [Bt, N, Hkv, D] -> Summary of ceil(N / n) tokens in k's dtype, differentiable in
    k and v through the pooling; bias float32 [Bt, ceil(N / n), Hkv] = ln(window size)."""
    tokens = k.shape[1]
    counts = block_sizes(tokens, pool)
    bias = jnp.broadcast_to(jnp.log(counts.astype(jnp.float32))[None, :, None],
                            (k.shape[0], counts.shape[0], k.shape[2]))
    return Summary(block_means(k, pool).astype(k.dtype), block_means(v, pool).astype(v.dtype),
                   bias)

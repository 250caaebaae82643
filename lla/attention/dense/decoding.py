"""Dense attention's incremental decoding (`registry.Decoding`), over `kv_lengths`.

The cache (`KVCache`) is a fixed-size buffer of keys and values. The prompt runs as one
causal forward over its own P tokens and fills the buffer's first P rows; a step writes its
token's key and value at the cache's length t and attends its query over the whole buffer
with `kv_lengths` = t + 1, which masks the unfilled tail: one compiled program serves every t.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lla.attention import registry

# Arguments a decoding sets itself (causal, kv_lengths) or cannot honour token by token.
_RESERVED = ("causal", "kv_lengths", "segment_ids", "return_residuals")


class KVCache(NamedTuple):
    """The keys and values of the tokens seen so far, in a buffer of `capacity` positions.

    Attributes:
      keys, values: [B, capacity, Hkv, D]; rows >= length are unused.
      length: int32 [], the number of filled rows (the next token's position).
    """

    keys: jax.Array
    values: jax.Array
    length: jax.Array


def kv_lengths_decoding(attend: Callable[..., jax.Array]) -> registry.Decoding:
    """The `Decoding` of `attend(q, k, v, *, causal=..., kv_lengths=..., **op_kwargs)`, an op
    whose `kv_lengths` (int [B]) masks keys j >= kv_lengths[b] and which takes Nq != Nk
    (`lla.attention.dot_product_attention`).

    `op_kwargs` may hold any other argument of `attend` (scale, implementation, ...); a
    `causal_block_size` other than 1 is rejected (a block of tokens sees its later tokens,
    which a step has not seen yet), as are the arguments in `_RESERVED`.
    """

    def init(batch, capacity, heads, kv_heads, head_dim, dtype, **op_kwargs) -> KVCache:
        _check_kwargs(op_kwargs)
        shape = (batch, capacity, kv_heads, head_dim)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                       jnp.zeros((), jnp.int32))

    def prefill(q, k, v, cache: KVCache, **op_kwargs) -> tuple[jax.Array, KVCache]:
        _check_kwargs(op_kwargs)
        prompt, capacity = k.shape[1], cache.keys.shape[1]
        if prompt > capacity:
            raise ValueError(f"dense decoding: a {prompt}-token prompt does not fit a cache of "
                             f"{capacity} positions; init the cache with capacity >= {prompt}")
        out = attend(q, k, v, causal=True, **op_kwargs)
        keys = cache.keys.at[:, :prompt].set(k.astype(cache.keys.dtype))
        values = cache.values.at[:, :prompt].set(v.astype(cache.values.dtype))
        return out, KVCache(keys, values, jnp.asarray(prompt, jnp.int32))

    def step(q, k, v, cache: KVCache, **op_kwargs) -> tuple[jax.Array, KVCache]:
        _check_kwargs(op_kwargs)
        position, capacity = cache.length, cache.keys.shape[1]
        # Past the end the write clamps to the last row; the NaN output says so.
        keys = lax.dynamic_update_slice_in_dim(cache.keys, k.astype(cache.keys.dtype),
                                               position, axis=1)
        values = lax.dynamic_update_slice_in_dim(cache.values, v.astype(cache.values.dtype),
                                                 position, axis=1)
        lengths = jnp.full((q.shape[0],), position + 1, jnp.int32)
        out = attend(q, keys, values, kv_lengths=lengths, **op_kwargs)
        out = jnp.where(position < capacity, out, jnp.nan)
        return out, KVCache(keys, values, position + 1)

    return registry.Decoding(init=init, prefill=prefill, step=step)


def _check_kwargs(op_kwargs) -> None:
    """ValueError for arguments that token-by-token decoding cannot take."""
    reserved = sorted(set(op_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(f"dense decoding: {', '.join(reserved)} cannot be passed (decoding is "
                         f"causal over one sequence per row and sets kv_lengths itself)")
    if op_kwargs.get("causal_block_size", 1) != 1:
        raise ValueError(f"dense decoding: causal_block_size={op_kwargs['causal_block_size']} "
                         f"lets a token see later tokens of its block, which a step has not "
                         f"seen yet; decode with causal_block_size=1")

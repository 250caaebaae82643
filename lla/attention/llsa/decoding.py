"""Token-by-token decoding with causal LLSA (docs/llsa_causal.md, "Decoding").

    cache = init_cache(batch, capacity, heads, kv_heads, head_dim, jnp.bfloat16, **static)
    out, cache = prefill(q, k, v, cache, **static)        # [B, P, H, D], P tokens cached
    out, cache = step(q1, k1, v1, cache, **static)         # [B, 1, H, D], the next token

`static` are the op's keyword arguments (block_size, topk, levels, enrich_levels, reweight).
`levels=None` resolves from the cache's capacity, as the forward resolves it from N: a model
whose training length differs from its cache should pass `levels` explicitly, so that both
use the same hierarchy.
The cache keeps what the causal definition reads, so a step costs what one row of the forward
costs (its own selection at most once per block plus O(K·B·L + T / B^L) keys), never a pass
over the whole cache: the keys and values, every pooled level's complete tokens (written when
their span completes, each pooled from the level below as `hierarchy.pyramid` pools), the
queries of the newest block and that block's selection query s_b. One step at position t
equals row t of `llsa(..., causal=True)` on the same tokens (the "xla" reference; a test
holds it to < 1e-5 in float32).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lla.attention.llsa import causal, hierarchy, reference


class Cache(NamedTuple):
    """Causal-LLSA decoding state of one layer; capacity C is a multiple of B^L.

    keys, values: [Bt, C, Hkv, D] (level 0, the input dtype).
    pooled_keys, pooled_values: L float32 arrays [Bt, C / B^l, Hkv, D], l = 1..L: token j is
      the mean over its span once the span is complete, unspecified before.
    block_queries: float32 [Bt, B, H, D]: the queries of block (length - 1) // B so far.
    selection_query: float32 [Bt, H, D]: s of that block (the mean query of the block before).
    length: int32 [], tokens in the cache.
    """

    keys: jax.Array
    values: jax.Array
    pooled_keys: tuple[jax.Array, ...]
    pooled_values: tuple[jax.Array, ...]
    block_queries: jax.Array
    selection_query: jax.Array
    length: jax.Array


def _levels(capacity: int, block_size: int, levels: int | None) -> int:
    """`levels`, or the causal op's default for `capacity` tokens."""
    if levels is None:
        return hierarchy.default_levels(capacity, block_size, causal=True)
    return levels


def init_cache(batch: int, capacity: int, heads: int, kv_heads: int, head_dim: int, dtype, *,
               block_size: int = 16, topk: int = 8, levels: int | None = None,
               enrich_levels: int | None = None, reweight: bool = True, implementation=None,
               interpret: bool = False) -> Cache:
    """An empty cache for up to `capacity` tokens (a multiple of block_size**levels; levels
    None: the op's default for N = capacity). The other arguments are the op's, accepted so
    that every phase takes the same keyword arguments; the cache does not depend on them."""
    del topk, enrich_levels, reweight, implementation, interpret
    levels = _levels(capacity, block_size, levels)
    span = block_size ** levels
    if capacity % span:
        raise ValueError(f"llsa decoding: capacity {capacity} is not a multiple of "
                         f"block_size**levels = {span}; use {-(-capacity // span) * span}")
    kv = jnp.zeros((batch, capacity, kv_heads, head_dim), dtype)
    pooled = tuple(jnp.zeros((batch, capacity // block_size ** level, kv_heads, head_dim),
                             jnp.float32) for level in range(1, levels + 1))
    return Cache(kv, kv, pooled, pooled,
                 jnp.zeros((batch, block_size, heads, head_dim), jnp.float32),
                 jnp.zeros((batch, heads, head_dim), jnp.float32), jnp.int32(0))


def prefill(q, k, v, cache: Cache, *, block_size: int = 16, topk: int = 8,
            levels: int | None = None, enrich_levels: int | None = None,
            reweight: bool = True, implementation=None, interpret: bool = False):
    """Causal LLSA over a prompt q [Bt, P, H, D], k, v [Bt, P, Hkv, D] (P <= capacity) into an
    empty cache -> (out [Bt, P, H, D], the cache holding the P tokens). The forward runs on
    the prompt padded to a valid length, at least K coarsest tokens (later tokens do not
    change earlier outputs)."""
    from lla.attention.llsa import llsa  # the public op (this module is imported by it)

    prompt = q.shape[1]
    capacity = cache.keys.shape[1]
    levels = _levels(capacity, block_size, levels)
    if not 1 <= prompt <= capacity:
        raise ValueError(f"llsa decoding: a prompt of {prompt} tokens does not fit a cache of "
                         f"{capacity}; use 1 <= P <= capacity")

    span = block_size ** levels
    valid = min(capacity, max(-(-prompt // span), topk) * span)

    def pad(x, length=capacity):
        return jnp.pad(x, [(0, 0), (0, length - prompt), (0, 0), (0, 0)])

    out = llsa(pad(q, valid), pad(k, valid), pad(v, valid), block_size=block_size, topk=topk,
               levels=levels, enrich_levels=enrich_levels, reweight=reweight, causal=True,
               implementation=implementation, interpret=interpret)[:, :prompt]
    keys, values = pad(k).astype(cache.keys.dtype), pad(v).astype(cache.values.dtype)
    pooled_keys = tuple(hierarchy.pyramid(keys, block_size, levels)[1:])
    pooled_values = tuple(hierarchy.pyramid(values, block_size, levels)[1:])
    last_block = (prompt - 1) // block_size
    queries = pad(q, valid).astype(jnp.float32)
    block_queries = queries[:, last_block * block_size:(last_block + 1) * block_size]
    in_block = jnp.arange(block_size) < prompt - last_block * block_size
    block_queries = jnp.where(in_block[None, :, None, None], block_queries, 0.0)
    selection = causal.selection_queries(queries, block_size)[:, :, last_block]
    return out, Cache(keys, values, pooled_keys, pooled_values, block_queries, selection,
                      jnp.int32(prompt))


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "levels", "enrich_levels",
                                             "reweight", "implementation", "interpret"))
def step(q, k, v, cache: Cache, *, block_size: int = 16, topk: int = 8,
         levels: int | None = None, enrich_levels: int | None = None, reweight: bool = True,
         implementation=None, interpret: bool = False):
    """The token at position t = cache.length: q [Bt, 1, H, D], k, v [Bt, 1, Hkv, D] ->
    (out [Bt, 1, H, D] = row t of the causal forward, the cache with the token). A step on a
    full cache returns NaN. `implementation` and `interpret` are accepted for the op's
    interface (one row is XLA's work)."""
    del implementation, interpret
    heads, head_dim = q.shape[2:]
    capacity = cache.keys.shape[1]
    levels = _levels(capacity, block_size, levels)
    enrich_levels = levels if enrich_levels is None else enrich_levels
    t = cache.length
    keys = lax.dynamic_update_slice_in_dim(cache.keys, k.astype(cache.keys.dtype), t, 1)
    values = lax.dynamic_update_slice_in_dim(cache.values, v.astype(cache.values.dtype), t, 1)
    pooled_keys = _pool_completed(keys, cache.pooled_keys, t, block_size)
    pooled_values = _pool_completed(values, cache.pooled_values, t, block_size)

    # A new block: the queries so far are block b - 1's, complete; their mean selects for b.
    starts = t % block_size == 0
    selection = jnp.where(starts, hierarchy.heads_major(cache.block_queries).mean(2),
                          cache.selection_query)
    block_queries = jnp.where(starts, 0.0, cache.block_queries)
    block_queries = lax.dynamic_update_slice_in_dim(block_queries, q.astype(jnp.float32),
                                                    t % block_size, 1)

    groups = heads // k.shape[2]
    k_levels = [keys.astype(jnp.float32), *pooled_keys]
    v_levels = [values.astype(jnp.float32), *pooled_values]
    block = (t // block_size)[None]
    picks = causal.select_blocks(selection[:, :, None], block, k_levels, block_size, topk)
    k_levels = [hierarchy.heads_major(jnp.repeat(x, groups, 2)) for x in k_levels]
    v_levels = [hierarchy.heads_major(jnp.repeat(x, groups, 2)) for x in v_levels]
    query = hierarchy.heads_major(q.astype(jnp.float32))[:, :, None] * head_dim ** -0.5
    out = reference.causal_attend(query, t[None, None], picks, k_levels, v_levels,
                                  block_size=block_size, enrich_levels=enrich_levels,
                                  reweight=reweight)
    out = jnp.where(t < capacity, out, jnp.nan).astype(q.dtype)
    return out, Cache(keys, values, pooled_keys, pooled_values, block_queries, selection,
                      t + 1)


def _pool_completed(level0: jax.Array, pooled: tuple, t: jax.Array, block_size: int) -> tuple:
    """`pooled` with every level-l token that position t completes ((t + 1) % B^l = 0) set to
    the mean of its B children one level down, levels in order so each reads the one below."""
    below, out = level0.astype(jnp.float32), []
    for level, current in enumerate(pooled, start=1):
        token = t // block_size ** level
        children = lax.dynamic_slice_in_dim(below, token * block_size, block_size, 1)
        mean = children.reshape(children.shape[0], 1, block_size, *children.shape[2:]).mean(2)
        completes = (t + 1) % block_size ** level == 0
        old = lax.dynamic_slice_in_dim(current, token, 1, 1)
        current = lax.dynamic_update_slice_in_dim(current, jnp.where(completes, mean, old),
                                                  token, 1)
        out.append(current)
        below = current
    return tuple(out)

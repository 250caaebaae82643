"""SLA's block classification (no gradient): critical, marginal and negligible key blocks.

Tokens are cut into blocks of B (the last one partial when B does not divide N). Per query
block b and head h, every key block j gets the score q̄_b · k̄_j (the means of b's queries and
j's keys, no 1/sqrt(D) scale). Ranked highest first, ties to the lower block: the top
`critical_blocks` are computed exactly, the bottom `negligible_blocks` are skipped, the ones
in between are marginal and go through the linear branch. (SLA first takes the mean key of
the sequence away from every key, SageAttention's "smooth-k"; that shifts all scores of a
row by the same q̄_b · mean(k), so it cannot change a ranking and is left out.)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lla.attention.common.block_sparse import block_means, listed_keys


class BlockClasses(NamedTuple):
    """critical: int32 [Bt, H, nQ, Kc], the critical key blocks of each query block,
    ascending; marginal: float32 [Bt, H, nQ, nK], 1 where key block j is marginal for query
    block b, else 0."""

    critical: jax.Array
    marginal: jax.Array


def classify(q: jax.Array, k: jax.Array, *, block_size: int, critical_blocks: int,
             negligible_blocks: int) -> BlockClasses:
    """q [Bt, Nq, H, D], k [Bt, Nk, Hkv, D] -> the classes of every (query block, key block)
    (see the module docstring); critical_blocks + negligible_blocks <= nK."""
    heads = q.shape[2]
    q = lax.stop_gradient(q).astype(jnp.float32)
    k = lax.stop_gradient(k).astype(jnp.float32)
    q_means = block_means(q, block_size).transpose(0, 2, 1, 3)
    k_means = jnp.repeat(block_means(k, block_size), heads // k.shape[2], axis=2)
    scores = jnp.einsum("bhqd,bkhd->bhqk", q_means, k_means, precision=lax.Precision.HIGHEST)
    order = jnp.argsort(-scores, axis=-1, stable=True).astype(jnp.int32)
    key_blocks = scores.shape[-1]
    positions = jnp.broadcast_to(jnp.arange(key_blocks, dtype=jnp.int32), order.shape)
    rank = jnp.put_along_axis(jnp.zeros_like(order), order, positions, axis=-1,
                              inplace=False)  # rank[j]: position of key block j in the order
    marginal = (rank >= critical_blocks) & (rank < key_blocks - negligible_blocks)
    return BlockClasses(jnp.sort(order[..., :critical_blocks], axis=-1),
                        marginal.astype(jnp.float32))


def keys_per_query(q: jax.Array, k: jax.Array, v: jax.Array, *, block_size: int,
                   critical_blocks: int, negligible_blocks: int, **_) -> jax.Array:
    """The op's `keys_per_query`: the keys of the critical blocks, the exact branch (the
    linear branch's work per query, a [D, D] state product, is not counted as keys)."""
    del v
    classes = classify(q, k, block_size=block_size, critical_blocks=critical_blocks,
                       negligible_blocks=negligible_blocks)
    return listed_keys(classes.critical, block_size, q.shape[1], k.shape[1])

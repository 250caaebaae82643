"""Key-major CSR transposes of query-major LLSA selections (deterministic, no atomics).

A selection `picks [R, G, K]` says which K key blocks each of the G query groups of row R
(a batch·head) attends to. Its transpose lists, for every key block, the query groups that
picked it, so a dK/dV kernel can own one key block and loop over its readers:

    groups of key block j = flat[r, offsets[r, j] : offsets[r, j + 1]]

Groups appear in ascending order within each key block, so the gradient summation order is
fixed: two runs give identical bits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def transpose_picks(picks: jax.Array, num_keys: int) -> tuple[jax.Array, jax.Array]:
    """CSR transpose of a selection.

    Args:
      picks: int32 [R, G, K], key-block ids in [0, num_keys), distinct within a group.
      num_keys: number of key blocks.

    Returns:
      offsets int32 [R, num_keys + 1] and flat int32 [R, G·K] (query-group ids).
    """
    rows, groups, topk = picks.shape
    keys = picks.reshape(rows, groups * topk)
    order = jnp.argsort(keys, axis=-1, stable=True)
    flat = (order // topk).astype(jnp.int32)
    counts = jax.vmap(lambda row: jnp.bincount(row, length=num_keys))(keys)
    offsets = jnp.concatenate(
        [jnp.zeros((rows, 1), jnp.int32), jnp.cumsum(counts, axis=-1).astype(jnp.int32)], -1)
    return offsets, flat

"""Backend-neutral block-list metadata of block-sparse attention (plain int32 arrays).

An index table `indices [R, G, K]` says which (at most) K key blocks each of the G query
groups of row R (a batch·head) attends to; -1 marks an empty slot, anywhere in a list. From
it:

  `query_major(indices)` -> (blocks [R, G, K], counts [R, G]): each list ascending with its
      `counts[r, g]` valid entries first; empty slots hold block 0, so a kernel that reads a
      whole chunk of slots stays in bounds (it masks the slots >= count).
  `transpose(indices, num_keys)` -> (offsets [R, num_keys + 1], readers [R, G·K]): the
      key-major CSR, so a dK/dV kernel owns one key block and loops over the groups that
      read it: readers of key block j = readers[r, offsets[r, j] : offsets[r, j + 1]].

Readers appear in ascending order within each key block, so the gradient summation order is
fixed: two runs give identical bits. Shared by the sparse-flash kernels and LLSA's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def query_major(indices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(blocks, counts) of an index table (see the module docstring); entries must be
    distinct within a list, apart from -1."""
    empty = indices < 0
    past_end = jnp.iinfo(jnp.int32).max
    ordered = jnp.sort(jnp.where(empty, past_end, indices), axis=-1)
    counts = (~empty).sum(-1).astype(jnp.int32)
    return jnp.where(ordered == past_end, 0, ordered).astype(jnp.int32), counts


def transpose(indices: jax.Array, num_keys: int) -> tuple[jax.Array, jax.Array]:
    """Key-major CSR of an index table.

    Args:
      indices: int32 [R, G, K], key-block ids in [0, num_keys) or -1 (empty), distinct
        within a group apart from -1.
      num_keys: number of key blocks.

    Returns:
      offsets int32 [R, num_keys + 1] and readers int32 [R, G·K] (query-group ids; the
      empty slots' groups sit after offsets[:, -1] and are never read).
    """
    rows, groups, topk = indices.shape
    keys = indices.reshape(rows, groups * topk)
    keys = jnp.where(keys < 0, num_keys, keys)  # empties sort last
    order = jnp.argsort(keys, axis=-1, stable=True)
    readers = (order // topk).astype(jnp.int32)
    counts = jax.vmap(lambda row: jnp.bincount(row, length=num_keys))(keys)
    offsets = jnp.concatenate(
        [jnp.zeros((rows, 1), jnp.int32), jnp.cumsum(counts, axis=-1).astype(jnp.int32)], -1)
    return offsets, readers

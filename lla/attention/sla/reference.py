"""The "xla" implementation of "sla": the block classes, block-sparse attention over the
critical blocks in plain JAX (`lla.attention.common.block_sparse.attend_blocks`) and the
linear branch over the marginal ones (`linear.py`)."""

from __future__ import annotations

import functools

import jax

from lla.attention.common.block_sparse import attend_blocks
from lla.attention.sla import linear, selection

STATIC = ("block_size", "critical_blocks", "negligible_blocks", "feature_map", "interpret")


@functools.partial(jax.jit, static_argnames=STATIC)
def sla_xla(q, k, v, kernel, bias, *, block_size, critical_blocks, negligible_blocks,
            feature_map, interpret):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D], kernel [D, D], bias [D] -> [Bt, Nq, H, D]
    (see `lla.attention.sla`); `interpret` only matters to the Pallas implementations."""
    del interpret
    classes = selection.classify(q, k, block_size=block_size, critical_blocks=critical_blocks,
                                 negligible_blocks=negligible_blocks)
    sparse = attend_blocks(q, k, v, classes.critical, block_size=block_size)
    return linear.combine(sparse, linear.linear_branch(
        q, k, v, classes.marginal, block_size=block_size, feature=feature_map),
        kernel, bias, q.dtype)

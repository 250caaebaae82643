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
    return sparse_linear(
        q, k, v, kernel, bias,
        lambda critical: attend_blocks(q, k, v, critical, block_size=block_size),
        block_size=block_size, critical_blocks=critical_blocks,
        negligible_blocks=negligible_blocks, feature_map=feature_map)


def sparse_linear(q, k, v, kernel, bias, attend_critical, *, block_size, critical_blocks,
                  negligible_blocks, feature_map):
    """SLA on a given exact branch, the part every implementation shares: the block classes,
    `attend_critical(critical int32 [Bt, H, nQ, Kc]) -> [Bt, Nq, H, D]` over the critical
    blocks, the linear branch over the marginal ones and the projection; -> [Bt, Nq, H, D]
    in q's dtype."""
    classes = selection.classify(q, k, block_size=block_size, critical_blocks=critical_blocks,
                                 negligible_blocks=negligible_blocks)
    return linear.combine(attend_critical(classes.critical), linear.linear_branch(
        q, k, v, classes.marginal, block_size=block_size, feature=feature_map),
        kernel, bias, q.dtype)

"""The "xla" implementation of "topk_block": the shared selection, then block-sparse attention
over the picked blocks in plain JAX (`lla.attention.common.block_sparse.attend_blocks`)."""

from __future__ import annotations

import functools

import jax

from lla.attention.common.block_sparse import attend_blocks
from lla.attention.topk_block import selection


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "local", "causal",
                                             "interpret"))
def topk_block_xla(q, k, v, *, block_size, topk, local, causal, interpret):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D] (see `lla.attention
    .topk_block`); `interpret` only matters to the Pallas implementations."""
    del interpret
    picks = selection.select(q, k, block_size=block_size, topk=topk, local=local,
                             causal=causal)
    return attend_blocks(q, k, v, picks, block_size=block_size, causal=causal)

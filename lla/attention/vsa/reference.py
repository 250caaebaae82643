"""The "xla" implementation of "vsa": the coarse branch plus block-sparse attention over the
top-K tiles in plain JAX (`lla.attention.common.block_sparse.attend_blocks`)."""

from __future__ import annotations

import functools

import jax

from lla.attention.common.block_sparse import attend_blocks
from lla.attention.topk_block import selection
from lla.attention.vsa.coarse import with_coarse


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "interpret"))
def vsa_xla(q, k, v, *, block_size, topk, interpret):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D] (see `lla.attention.vsa`)."""
    del interpret
    picks = selection.select(q, k, block_size=block_size, topk=topk, local=False,
                             causal=False)
    return with_coarse(attend_blocks(q, k, v, picks, block_size=block_size), q, k, v,
                       block_size)

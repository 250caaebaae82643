"""The "xla" implementations of "asa" and "asa_gt": the prober's lists, then block-sparse
attention in plain JAX (`lla.attention.common.block_sparse.attend_blocks`), ASA_GT with its
pooled global tokens."""

from __future__ import annotations

import functools

import jax

from lla.attention.asa import prober
from lla.attention.asa.globals import global_tokens
from lla.attention.common.block_sparse import attend_blocks

STATIC = ("block_size", "samples", "tau", "min_keep", "max_keep", "seed", "interpret")


@functools.partial(jax.jit, static_argnames=STATIC)
def asa_xla(q, k, v, *, block_size, samples, tau, min_keep, max_keep, seed, interpret):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D] (see `lla.attention.asa`)."""
    del interpret
    picks = prober.select(q, k, block_size=block_size, samples=samples, tau=tau,
                          min_keep=min_keep, max_keep=max_keep, seed=seed)
    return attend_blocks(q, k, v, picks, block_size=block_size)


@functools.partial(jax.jit, static_argnames=(*STATIC, "pool"))
def asa_gt_xla(q, k, v, *, block_size, samples, tau, min_keep, max_keep, seed, pool,
               interpret):
    """`asa_xla` plus the global tokens of windows of `pool` keys (see `lla.attention.asa`)."""
    del interpret
    picks = prober.select(q, k, block_size=block_size, samples=samples, tau=tau,
                          min_keep=min_keep, max_keep=max_keep, seed=seed)
    return attend_blocks(q, k, v, picks, block_size=block_size,
                         summary=global_tokens(k, v, pool))

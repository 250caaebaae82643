"""Sparse-level LLSA selection in one Pallas (Triton lowering) kernel per level.

For level l < L, every level-l query token i keeps the top-K of the K·B children of its
parent's picks, {j·B + c : j in picks[l + 1][i // B], c < B}, ranked by q·k (no scale), ties
to the lower token index, returned ascending — the same contract as
`lla.attention.llsa.hierarchy.select`, whose XLA version gathers the candidates into memory.
Here one program scores the B query tokens of one parent against its K·B candidates in
registers, picks K times the lowest-index maximum, then emits the picks in ascending order.

Layouts (Bt batch, H query heads, Hkv kv heads, N_l = N / B^l):
  q_level       float32 [Bt, N_l, H, D]          pooled queries of level l
  k_level       float32 [Bt, N_l / B, B, Hkv, D] pooled keys of level l, as blocks
  parent_picks  int32 [Bt·H, N_l / B, K]         picks of level l + 1 (ascending)
  returns       int32 [Bt·H, N_l, K]             picks of level l (ascending)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from lla.pallas_kernels.llsa.gpu import Config


def _select_kernel(q_ref, k_ref, parent_ref, picks_ref, *, config: Config):
    size, topk = config.block_size, config.topk
    width = topk * size
    parents = parent_ref[...]  # [K] level-(l+1) tokens = level-l blocks
    keys = k_ref[parents].reshape(width, config.head_dim)
    scores = plt.dot(q_ref[...], keys, trans_b=True, precision=lax.Precision.HIGHEST)
    offsets = lax.broadcasted_iota(jnp.int32, (topk, size), 1)
    tokens = (parents[:, None] * size + offsets).reshape(1, width)  # ascending
    tokens = jnp.broadcast_to(tokens, (size, width))
    past_end = jnp.int32(2**31 - 1)

    def pick_best(_, state):
        scores, chosen = state
        best = scores.max(axis=1, keepdims=True)
        first = jnp.where(scores == best, tokens, past_end).min(axis=1, keepdims=True)
        hit = tokens == first
        return jnp.where(hit, -jnp.inf, scores), chosen | hit

    _, chosen = lax.fori_loop(0, topk, pick_best,
                              (scores, jnp.zeros((size, width), jnp.bool_)))
    slots = lax.broadcasted_iota(jnp.int32, (size, topk), 1)

    def emit_lowest(t, state):
        chosen, picks = state
        lowest = jnp.where(chosen, tokens, past_end).min(axis=1, keepdims=True)
        return chosen & (tokens != lowest), jnp.where(slots == t, lowest, picks)

    _, picks = lax.fori_loop(0, topk, emit_lowest,
                             (chosen, jnp.zeros((size, topk), jnp.int32)))
    picks_ref[...] = picks


def select_children(q_level, k_level, parent_picks, config: Config) -> jax.Array:
    """Level-l picks from level-(l+1) picks (see the module docstring for layouts)."""
    batch, level_tokens, heads, dim = q_level.shape
    size = config.block_size
    rows = batch * heads
    return pl.pallas_call(
        functools.partial(_select_kernel, config=config),
        grid=(level_tokens // size, rows),
        in_specs=[
            pl.BlockSpec((None, size, None, dim),
                         lambda p, row: (config.batch(row), p, config.head(row), 0)),
            pl.BlockSpec((None, level_tokens // size, size, None, dim),
                         lambda p, row: (config.batch(row), 0, 0, config.kv_head(row), 0)),
            pl.BlockSpec((None, None, config.topk), lambda p, row: (row, p, 0)),
        ],
        out_specs=pl.BlockSpec((None, size, config.topk), lambda p, row: (row, p, 0)),
        out_shape=jax.ShapeDtypeStruct((rows, level_tokens, config.topk), jnp.int32),
        compiler_params=config.compiler_params(),
        interpret=config.interpret,
        name="llsa_select_children",
    )(q_level, k_level, parent_picks)

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

Causal (`select_causal_children`, docs/llsa_causal.md): every query block b of the N / B
selects at every level, with its selection query s_b, among the children of its level-(l+1)
picks and of its open parent c_{l+1}(b), keeping the complete ones (j < c_l(b)) — the
contract of `lla.attention.llsa.causal.select_blocks`' intermediate levels, whose XLA
version gathers the (K + 1)·B candidate keys of every block into memory. Here one program
per (query block, row) gathers them in registers:
  s             float32 [Bt·H, N / B, D]         selection queries, rows-major
  k_level       float32 [Bt, N_l / B, B, Hkv, D] pooled keys of level l, as blocks
  parent_picks  int32 [Bt·H, N / B, K]           level-(l+1) picks, -1 in empty slots
  returns       int32 [Bt·H, N / B, K]           level-l picks, ascending, -1 after them
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


# ---- causal: per query block, children of the picks and of the open parent -----------------

def _causal_select_kernel(s_ref, k_ref, parent_ref, picks_ref, *, level: int, config: Config):
    size, topk, dim = config.block_size, config.topk, config.head_dim
    block = pl.program_id(0)
    complete = block * size // size ** level                 # c_l(b): level-l tokens done
    open_parent = block * size // size ** (level + 1)        # c_{l+1}(b)
    query = s_ref[...]                                       # [1, D]
    parents = parent_ref[0]                                  # [K], -1: empty slot
    offsets = lax.broadcasted_iota(jnp.int32, (topk, size), 1)
    # the picks' children: complete whenever their parent is a pick (parents < c_{l+1}(b))
    picked_keys = k_ref[jnp.maximum(parents, 0)].reshape(topk * size, dim)
    picked_tokens = (parents[:, None] * size + offsets).reshape(1, topk * size)
    picked_valid = jnp.broadcast_to(parents[:, None] >= 0, (topk, size)).reshape(1, -1)
    # the open parent's children: complete up to c_l(b)
    open_keys = k_ref[pl.ds(open_parent, 1)].reshape(size, dim)
    open_tokens = open_parent * size + lax.broadcasted_iota(jnp.int32, (1, size), 1)
    sources = []
    for keys, tokens, valid in ((picked_keys, picked_tokens, picked_valid),
                                (open_keys, open_tokens, open_tokens < complete)):
        scores = jnp.sum(keys * query, axis=1)[None, :]     # f32 products, like HIGHEST
        sources.append((tokens, jnp.where(valid, scores, -jnp.inf)))
    past_end = jnp.int32(2**31 - 1)

    def pick_best(_, scores):
        """Marks the best remaining candidate (lowest token on ties; none once only
        non-candidates, -inf, are left) by setting its score to +inf."""
        remaining = [jnp.where(s == jnp.inf, -jnp.inf, s) for s in scores]
        best = jnp.maximum(*(r.max() for r in remaining))
        first = jnp.minimum(*(
            jnp.where((r == best) & (best > -jnp.inf), tokens, past_end).min()
            for (tokens, _), r in zip(sources, remaining, strict=True)))
        return tuple(jnp.where((tokens == first) & (r > -jnp.inf), jnp.inf, s)
                     for (tokens, _), r, s in zip(sources, remaining, scores, strict=True))

    scores = lax.fori_loop(0, topk, pick_best, tuple(s for _, s in sources))
    chosen = [(tokens, s == jnp.inf) for (tokens, _), s in zip(sources, scores, strict=True)]
    slots = lax.broadcasted_iota(jnp.int32, (1, topk), 1)

    def emit_lowest(t, state):
        left, picks = state
        lowest = jnp.minimum(*(jnp.where(keep, tokens, past_end).min()
                               for (tokens, _), keep in zip(chosen, left, strict=True)))
        left = tuple(keep & (tokens != lowest) for (tokens, _), keep in zip(chosen, left,
                                                                            strict=True))
        return left, jnp.where(slots == t, lowest, picks)

    _, picks = lax.fori_loop(0, topk, emit_lowest,
                             (tuple(keep for _, keep in chosen),
                              jnp.zeros((1, topk), jnp.int32)))
    picks_ref[...] = jnp.where(picks == past_end, -1, picks)


def select_causal_children(s, k_level, parent_picks, level: int, config: Config) -> jax.Array:
    """Causal level-`level` picks (1 <= level < L) of every query block from its
    level-(level + 1) picks (see the module docstring for layouts)."""
    rows, blocks, dim = s.shape
    return pl.pallas_call(
        functools.partial(_causal_select_kernel, level=level, config=config),
        grid=(blocks, rows),
        in_specs=[
            pl.BlockSpec((None, 1, dim), lambda b, row: (row, b, 0)),
            pl.BlockSpec((None, k_level.shape[1], config.block_size, None, dim),
                         lambda b, row: (config.batch(row), 0, 0, config.kv_head(row), 0)),
            pl.BlockSpec((None, 1, config.topk), lambda b, row: (row, b, 0)),
        ],
        out_specs=pl.BlockSpec((None, 1, config.topk), lambda b, row: (row, b, 0)),
        out_shape=jax.ShapeDtypeStruct((rows, blocks, config.topk), jnp.int32),
        compiler_params=config.compiler_params(),
        interpret=config.interpret,
        name="llsa_select_causal_children",
    )(s, k_level, parent_picks)

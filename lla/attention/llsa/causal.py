"""The causal LLSA hierarchy (docs/llsa_causal.md): what block b may use, its selection query
and its per-level selection. Shared by every causal implementation, like `hierarchy`.

With B = block_size and c_l(b) = floor(b·B / B^l), level-l token j (l >= 1) is complete for
query block b when j < c_l(b); the open parent of block b at level l + 1 is c_{l+1}(b).
Selections are per query block at every level, heads-major, int32 [Bt, H, nb, K] for the
query blocks `blocks` (int32 [nb]: all N / B of them in the forward, the newest one when
decoding), with -1 where fewer than K candidates exist; valid picks first, ascending.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lla.attention.llsa import hierarchy

INVALID = -1  # a pick slot without a candidate


def complete_count(level: int, blocks: jax.Array, block_size: int) -> jax.Array:
    """c_l(b) for the query blocks `blocks` int32 [nb]: the level-l tokens complete for each
    (level 0: b·B, the positions before the block)."""
    return (blocks * block_size) // block_size ** level


def selection_queries(q: jax.Array, block_size: int) -> jax.Array:
    """s_b, the mean query of block b - 1 (zeros for b = 0, which selects nothing):
    q [Bt, N, H, D] -> float32 [Bt, H, N / B, D], without gradient."""
    means = hierarchy.pyramid(lax.stop_gradient(q), block_size, 1)[1]
    shifted = jnp.concatenate([jnp.zeros_like(means[:, :1]), means[:, :-1]], axis=1)
    return hierarchy.heads_major(shifted)


def parents_with_open(picks: jax.Array, level: int, blocks: jax.Array, block_size: int
                      ) -> jax.Array:
    """The level-`level` parents whose children block b reads one level down: its picks
    I_level(b) [Bt, H, nb, K] with its open parent c_level(b) appended -> [..., K + 1]."""
    open_parent = complete_count(level, blocks, block_size)
    open_parent = jnp.broadcast_to(open_parent[:, None], (*picks.shape[:3], 1))
    return jnp.concatenate([picks, open_parent], axis=-1)


def usable_children(parents: jax.Array, level: int, blocks: jax.Array, block_size: int
                    ) -> tuple:
    """Children at level `level` of `parents` [Bt, H, nb, P] (INVALID allowed) -> (tokens
    int32 [Bt, H, nb, P·B] clamped to >= 0 for gathering, mask [Bt, H, nb, P·B] of the
    complete ones (level >= 1; level 0 is masked per query by the caller))."""
    children = hierarchy.children(parents, block_size)
    valid = jnp.repeat(parents >= 0, block_size, axis=-1)
    if level >= 1:
        limit = complete_count(level, blocks, block_size)
        valid &= children < limit[:, None]
    return jnp.maximum(children, 0), valid


def _top_k(scores: jax.Array, tokens: jax.Array, topk: int) -> jax.Array:
    """The top-`topk` of `tokens` [..., M] by `scores` [..., M] (-inf: not a candidate), ties
    to the lower token (candidates come ascending) -> int32 [..., K], valid ones ascending,
    INVALID after them."""
    topk_scores, position = lax.top_k(scores, topk)
    chosen = jnp.take_along_axis(tokens, position, axis=-1)
    last = jnp.iinfo(jnp.int32).max
    chosen = jnp.sort(jnp.where(topk_scores > -jnp.inf, chosen, last), axis=-1)
    return jnp.where(chosen == last, INVALID, chosen).astype(jnp.int32)


def select(q: jax.Array, k_levels: list[jax.Array], block_size: int, topk: int
           ) -> dict[int, jax.Array]:
    """Causal hierarchical top-K selection of every query block (no gradient).

    Args:
      q: [Bt, N, H, D] queries (only the selection queries s_b are used).
      k_levels: `hierarchy.pyramid(k)`, L + 1 arrays [Bt, N / B^l, Hkv, D] (level 0 unread).
      block_size, topk: B and K.

    Returns:
      {l: I_l(b)} for l = 1..L, int32 [Bt, H, N / B, K]: the level-l tokens block b picks
      (INVALID where fewer than K candidates exist).
    """
    s = selection_queries(q, block_size)
    blocks = jnp.arange(s.shape[2], dtype=jnp.int32)
    return select_blocks(s, blocks, k_levels, block_size, topk)


def select_blocks(s: jax.Array, blocks: jax.Array, k_levels: list, block_size: int,
                  topk: int) -> dict[int, jax.Array]:
    """The selection of query blocks `blocks` int32 [nb] with their selection queries s
    float32 [Bt, H, nb, D] (no gradient); k_levels as in `select`, or longer (a decoding
    cache: tokens past the block's complete ones are never candidates). Returns
    {l: int32 [Bt, H, nb, K]}."""
    levels = len(k_levels) - 1
    heads = s.shape[1]

    def keys(level):
        x = jnp.repeat(k_levels[level], heads // k_levels[level].shape[2], axis=2)
        return lax.stop_gradient(hierarchy.heads_major(x).astype(jnp.float32))

    coarsest = keys(levels)  # [Bt, H, N_L, D]
    scores = jnp.einsum("bhnd,bhmd->bhnm", s, coarsest, precision=lax.Precision.HIGHEST)
    tokens = jnp.arange(coarsest.shape[2], dtype=jnp.int32)
    complete = tokens < complete_count(levels, blocks, block_size)[:, None]
    picks = {levels: _top_k(jnp.where(complete, scores, -jnp.inf),
                            jnp.broadcast_to(tokens, scores.shape), topk)}
    for level in range(levels - 1, 0, -1):
        candidates, valid = usable_children(
            parents_with_open(picks[level + 1], level + 1, blocks, block_size), level, blocks,
            block_size)
        candidate_keys = hierarchy.gather_tokens(keys(level), candidates)  # [.., M, D]
        scores = jnp.einsum("bhnd,bhnmd->bhnm", s, candidate_keys,
                            precision=lax.Precision.HIGHEST)
        picks[level] = _top_k(jnp.where(valid, scores, -jnp.inf), candidates, topk)
    return picks

"""The "xla" implementation of LLSA: the readable definition, gather-based, float32 at
HIGHEST precision; autodiff gives the gradients. Held to the brute-force oracle of
tests/attention/llsa/oracle.py.

With B = block_size, K = topk and L = levels, query block b (B consecutive queries) attends,
in one softmax with scale 1/sqrt(D), to
  fine:          the B tokens of each of its K selected level-0 blocks      weight 1
  level 0<l<L:   the K·B level-l candidates of its level-l parent           weight B^l
  coarsest L:    all N / B^L level-L tokens                                  weight B^L
where level-l keys and values are means over B^l consecutive tokens (`hierarchy.pyramid`),
the selection is `hierarchy.select` (no gradient) and a weight w enters as +log(w) on the
logit. Ablations: only levels 0..Lₑ (Lₑ = enrich_levels) are attended, and reweight=False
gives every weight 1.

causal=True is the definition of docs/llsa_causal.md (`_causal`): per query block its own
selection (`causal.select`), at every level l < L the children of its picks and of its open
parent kept when complete (level 0: at or before the query), and the complete coarsest tokens.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from lla.attention.llsa import causal as causal_hierarchy
from lla.attention.llsa import hierarchy


def _einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, precision=lax.Precision.HIGHEST)


def _log_weight(level: int, block_size: int, reweight: bool) -> float:
    """log of the softmax weight of a level-`level` token: B^l, or 1 without reweighting."""
    return level * math.log(block_size) if reweight else 0.0


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "levels", "enrich_levels",
                                             "reweight", "causal", "interpret"))
def llsa_xla(q, k, v, *, block_size, topk, levels, enrich_levels, reweight, causal,
             interpret):
    """q [Bt, N, H, D], k/v [Bt, N, Hkv, D] -> [Bt, N, H, D] (see `lla.attention.llsa`).

    Memory O(N·(K·B·L + N/B^L)·D) per head: per query block it gathers its K·B fine keys and
    K·B keys per intermediate level ((K + 1)·B with `causal`), and reads all coarsest-level
    keys.
    """
    del interpret  # pure JAX
    if causal:
        return _causal(q, k, v, block_size=block_size, topk=topk, levels=levels,
                       enrich_levels=enrich_levels, reweight=reweight)
    q_levels = hierarchy.pyramid(q, block_size, levels)
    k_levels = hierarchy.pyramid(k, block_size, levels)
    picks = hierarchy.select(q_levels, k_levels, block_size, topk)
    heads = q.shape[2]
    return attend(query_blocks(q, block_size), picks,
                  heads_major_levels(k_levels, heads),
                  heads_major_levels(hierarchy.pyramid(v, block_size, levels), heads),
                  block_size=block_size, enrich_levels=enrich_levels,
                  reweight=reweight).astype(q.dtype)


def heads_major_levels(levels: list[jax.Array], heads: int) -> list[jax.Array]:
    """`hierarchy.pyramid` levels [Bt, T_l, Hkv, D] -> heads-major [Bt, H, T_l, D], each kv
    head repeated for its H / Hkv query heads."""
    return [hierarchy.heads_major(jnp.repeat(x, heads // x.shape[2], 2)) for x in levels]


def attend(q_blocks, picks, k_levels, v_levels, *, block_size, enrich_levels, reweight
           ) -> jax.Array:
    """The (non-causal) attention of query blocks over a `hierarchy.select` selection.

    Args:
      q_blocks: float32 [Bt, H, nb, B, D], scaled by 1/sqrt(D) (`query_blocks`): nb
        consecutive query blocks, the first one's level-l parent token aligned to a level-l
        token (nb = N / B in the forward; a device's share under sequence parallelism).
      picks: `hierarchy.select` of those blocks' pooled queries, {l: [Bt, H, nb / B^(l-1), K]}.
      k_levels, v_levels: L + 1 float32 heads-major pyramids [Bt, H, N / B^l, D] of the whole
        sequence (GQA heads repeated, `heads_major_levels`).
      block_size, enrich_levels, reweight: as the op's.

    Returns:
      float32 [Bt, nb·B, H, D].
    """
    levels = len(k_levels) - 1
    logits, values = [], []
    # Fine and intermediate levels: per query block, the K·B tokens (of level l) that are the
    # children of its level-(l+1) picks; query block b's level-(l+1) parent token is b // B^l.
    for level in range(min(levels, enrich_levels + 1)):
        parent_picks = jnp.repeat(picks[level + 1], block_size ** level, axis=2)
        index = hierarchy.children(parent_picks, block_size)  # [Bt, H, nb, K·B]
        logits.append(_einsum("bhnqd,bhnmd->bhnqm", q_blocks,
                              hierarchy.gather_tokens(k_levels[level], index))
                      + _log_weight(level, block_size, reweight))
        values.append(hierarchy.gather_tokens(v_levels[level], index))
    if enrich_levels == levels:  # all N / B^L level-L tokens
        logits.append(_einsum("bhnqd,bhmd->bhnqm", q_blocks, k_levels[levels])
                      + _log_weight(levels, block_size, reweight))
        values.append(v_levels[levels])
    return _combine(logits, values, jnp.float32)


def query_blocks(q: jax.Array, block_size: int) -> jax.Array:
    """q [Bt, N, H, D] -> float32 [Bt, H, N / B, B, D], scaled by 1/sqrt(D)."""
    batch, tokens, heads, head_dim = q.shape
    q = hierarchy.heads_major(q.astype(jnp.float32))
    return q.reshape(batch, heads, tokens // block_size, block_size, head_dim) * head_dim ** -0.5


def _combine(logits: list[jax.Array], values: list[jax.Array], dtype) -> jax.Array:
    """One softmax over the concatenated sources, each logits [Bt, H, N/B, B, M] with values
    gathered per query block [Bt, H, N/B, M, D] or shared by all [Bt, H, M, D] -> the output
    [Bt, N, H, D] in `dtype`."""
    probs = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1)
    sizes = [x.shape[-1] for x in logits]
    splits = jnp.split(probs, [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)], axis=-1)
    out = sum(_einsum("bhnqm,bhnmd->bhnqd" if value.ndim == 5 else "bhnqm,bhmd->bhnqd",
                      p, value) for p, value in zip(splits, values, strict=True))
    batch, heads, blocks, block_size, head_dim = out.shape
    out = out.reshape(batch, heads, blocks * block_size, head_dim)
    return hierarchy.heads_major(out).astype(dtype)


def _causal(q, k, v, *, block_size, topk, levels, enrich_levels, reweight):
    """Causal LLSA (docs/llsa_causal.md), shapes as `llsa_xla`."""
    tokens, heads = q.shape[1:3]
    k_levels = hierarchy.pyramid(k, block_size, levels)
    picks = causal_hierarchy.select(q, k_levels, block_size, topk)
    k_levels = heads_major_levels(k_levels, heads)
    v_levels = heads_major_levels(hierarchy.pyramid(v, block_size, levels), heads)
    blocks = tokens // block_size
    positions = jnp.arange(tokens, dtype=jnp.int32).reshape(blocks, block_size)
    return causal_attend(query_blocks(q, block_size), positions, picks, k_levels, v_levels,
                         block_size=block_size, enrich_levels=enrich_levels,
                         reweight=reweight).astype(q.dtype)


def causal_attend(q_blocks, positions, picks, k_levels, v_levels, *, block_size,
                  enrich_levels, reweight) -> jax.Array:
    """The causal attention of query rows grouped by query block, over a causal selection.

    Args:
      q_blocks: float32 [Bt, H, nb, R, D], scaled by 1/sqrt(D): R query rows of each of nb
        query blocks (a whole block in the forward; one row when decoding).
      positions: int32 [nb, R], the rows' positions (block b = positions // B).
      picks: `causal.select_blocks` of those blocks, {l: [Bt, H, nb, K]}.
      k_levels, v_levels: L + 1 float32 heads-major pyramids [Bt, H, T_l, D] (GQA heads
        repeated), T_l >= the tokens the blocks may use.
      block_size, enrich_levels, reweight: as the op's.

    Returns:
      float32 [Bt, nb·R, H, D].
    """
    levels = len(k_levels) - 1
    blocks = positions[:, 0] // block_size
    logits, values = [], []
    for level in range(min(levels, enrich_levels + 1)):
        parents = causal_hierarchy.parents_with_open(picks[level + 1], level + 1, blocks,
                                                     block_size)
        index, usable = causal_hierarchy.usable_children(parents, level, blocks, block_size)
        usable = usable[..., None, :]  # [Bt, H, nb, 1, M]: the same for the block's rows
        if level == 0:  # the own block: positions at or before the query
            usable = usable & (index[..., None, :] <= positions[:, :, None])
        logit = _einsum("bhnqd,bhnmd->bhnqm", q_blocks,
                        hierarchy.gather_tokens(k_levels[level], index))
        logits.append(jnp.where(usable, logit + _log_weight(level, block_size, reweight),
                                -jnp.inf))
        values.append(hierarchy.gather_tokens(v_levels[level], index))
    if enrich_levels == levels:  # the complete coarsest tokens
        coarse = jnp.arange(k_levels[levels].shape[2], dtype=jnp.int32)
        complete = coarse < causal_hierarchy.complete_count(levels, blocks, block_size)[:, None]
        logit = _einsum("bhnqd,bhmd->bhnqm", q_blocks, k_levels[levels])
        logits.append(jnp.where(complete[:, None, :], logit
                                + _log_weight(levels, block_size, reweight), -jnp.inf))
        values.append(v_levels[levels])
    return _combine(logits, values, jnp.float32)

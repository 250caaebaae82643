"""Top-K block selection from mean-pooled queries and keys (no gradient, no 1/sqrt(D) scale).

Shared by every implementation of "topk_block", so all of them attend to the same blocks.
Tokens are cut into blocks of B (the last one partial when B does not divide N); a block's
pooled query or key is the mean over its tokens. With nQ = ceil(Nq / B), nK = ceil(Nk / B):

  non-causal: query block b ranks every key block j by q̄_b · k̄_j and keeps the top K;
      `local` forces key block b (the diagonal) into those K.
  causal (Nq = Nk): query block b keeps its own block (masked on the diagonal by the
      attention) and the top K - 1 of the past blocks j < b, ranked by q̄_{b-1} · k̄_j: the
      mean query of the block before it, so that no output depends on a later query through
      the selection (query block 0 keeps its own block only; block b keeps min(K, b + 1)).

Ties go to the lower block index. Lists come back ascending, heads-major `[Bt, H, nQ, K]`,
with -1 in the empty slots (causal only), at the end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lla.attention.common.block_sparse import block_means, listed_keys


def ranking_means(q: jax.Array, k: jax.Array, block_size: int,
                  causal: bool) -> tuple[jax.Array, jax.Array]:
    """q [Bt, Nq, H, D], k [Bt, Nk, Hkv, D] -> float32 (q̄ [Bt, nQ, H, D], k̄ [Bt, nK, Hkv, D]),
    no gradient: the block means that rank the key blocks (causal: q̄ of block b is the mean
    of block b - 1, block 0 its own)."""
    q_means = lax.stop_gradient(block_means(q, block_size))
    if causal:
        q_means = jnp.concatenate([q_means[:, :1], q_means[:, :-1]], axis=1)
    return q_means, lax.stop_gradient(block_means(k, block_size))


def select(q: jax.Array, k: jax.Array, *, block_size: int, topk: int, local: bool,
           causal: bool) -> jax.Array:
    """q [Bt, Nq, H, D], k [Bt, Nk, Hkv, D] -> int32 [Bt, H, nQ, K] key blocks per query
    block (see the module docstring)."""
    heads = q.shape[2]
    q_means, k_means = ranking_means(q, k, block_size, causal)
    q_means = q_means.transpose(0, 2, 1, 3)
    k_means = jnp.repeat(k_means, heads // k.shape[2], axis=2).transpose(0, 2, 1, 3)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q_means, k_means, precision=lax.Precision.HIGHEST)
    query_block = jnp.arange(scores.shape[2])[:, None]
    key_block = jnp.arange(scores.shape[3])[None, :]
    if causal:
        scores = jnp.where(key_block < query_block, scores, -jnp.inf)
    if causal or local:
        scores = jnp.where(key_block == query_block, jnp.inf, scores)
    values, picks = lax.top_k(scores, topk)
    past_end = jnp.iinfo(jnp.int32).max
    picks = jnp.sort(jnp.where(values == -jnp.inf, past_end, picks.astype(jnp.int32)), -1)
    return jnp.where(picks == past_end, -1, picks)


def keys_per_query(q: jax.Array, k: jax.Array, v: jax.Array, *, block_size: int, topk: int,
                   local: bool, causal: bool, **_) -> jax.Array:
    """The op's `keys_per_query`: the keys of the selected blocks, K·B when every slot is
    filled (a causal diagonal block counts whole, as the kernels compute it)."""
    del v
    picks = select(q, k, block_size=block_size, topk=topk, local=local, causal=causal)
    return listed_keys(picks, block_size, q.shape[1], k.shape[1])

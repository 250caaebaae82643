"""ASA's block selection (Video-BLADE): a sampled-token prober and a cumulative-mass cut.

Tokens are cut into blocks of B (the last one partial). From every block, `samples` token
positions are drawn once, from a numpy generator seeded with `seed` (static: the same
positions at every call; with replacement only in a block with fewer tokens than that). With
the sampled queries Q_s and keys K_s of a head:
  P = softmax(Q_s K_sᵀ / sqrt(D)) over all sampled keys, per sampled query;
  importance[b, j] = the largest P between a sampled query of block b and a sampled key of
    block j (max pooling over the samples of the two blocks), normalised over j;
  query block b keeps its most important key blocks, highest first (ties to the lower
    block), the fewest m whose importance sums to >= tau, m clamped to
    [max(1, ceil(min_keep·nK)), ceil(max_keep·nK)].
Lists come back ascending, heads-major [Bt, H, nQ, ceil(max_keep·nK)], -1 in the slots past
m. No gradient. The probe costs (N·samples / B)^2 per head instead of N^2.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lla.attention.common.block_sparse import listed_keys, num_blocks


def sample_positions(tokens: int, block_size: int, samples: int, seed: int) -> np.ndarray:
    """int32 [ceil(N / B), samples]: the sampled token positions of each block."""
    rng = np.random.default_rng(seed)
    rows = []
    for start in range(0, tokens, block_size):
        count = min(block_size, tokens - start)
        rows.append(start + rng.choice(count, size=samples, replace=count < samples))
    return np.asarray(rows, np.int32)


def list_length(kv_tokens: int, block_size: int, max_keep: float) -> int:
    """K: slots per list, ceil(max_keep · nK)."""
    return max(1, math.ceil(max_keep * num_blocks(kv_tokens, block_size)))


def importance(q, k, *, block_size: int, samples: int, seed: int) -> jax.Array:
    """q [Bt, Nq, H, D], k [Bt, Nk, Hkv, D] -> float32 [Bt, H, nQ, nK], rows summing to 1."""
    heads = q.shape[2]
    q_positions = sample_positions(q.shape[1], block_size, samples, seed)
    k_positions = sample_positions(k.shape[1], block_size, samples, seed + 1)
    q_s = lax.stop_gradient(q[:, q_positions.reshape(-1)].astype(jnp.float32))
    k_s = lax.stop_gradient(k[:, k_positions.reshape(-1)].astype(jnp.float32))
    k_s = jnp.repeat(k_s, heads // k.shape[2], axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q_s, k_s,
                        precision=lax.Precision.HIGHEST) * q.shape[-1] ** -0.5
    probs = jax.nn.softmax(logits, axis=-1)
    batch = q.shape[0]
    pooled = probs.reshape(batch, heads, len(q_positions), samples, len(k_positions),
                           samples).max(axis=(3, 5))
    return pooled / pooled.sum(-1, keepdims=True)


def select(q, k, *, block_size: int, samples: int, tau: float, min_keep: float,
           max_keep: float, seed: int) -> jax.Array:
    """int32 [Bt, H, nQ, K] key blocks per query block (see the module docstring)."""
    scores = importance(q, k, block_size=block_size, samples=samples, seed=seed)
    key_blocks = scores.shape[-1]
    slots = list_length(k.shape[1], block_size, max_keep)
    fewest = min(slots, max(1, math.ceil(min_keep * key_blocks)))
    values, picks = lax.top_k(scores, slots)  # descending, ties to the lower block
    before = jnp.cumsum(values, axis=-1) - values  # mass of the better blocks
    keep = jnp.arange(slots) < fewest
    keep = keep | (before < tau)
    past_end = jnp.iinfo(jnp.int32).max
    picks = jnp.sort(jnp.where(keep, picks.astype(jnp.int32), past_end), axis=-1)
    return jnp.where(picks == past_end, -1, picks)


def keys_per_query(q, k, v, *, block_size: int, samples: int, tau: float, min_keep: float,
                   max_keep: float, seed: int, pool: int | None = None, **_) -> jax.Array:
    """The ops' `keys_per_query`: the keys of the kept blocks (data-dependent), plus
    ceil(Nk / pool) global tokens for ASA_GT (`pool` given)."""
    del v
    picks = select(q, k, block_size=block_size, samples=samples, tau=tau, min_keep=min_keep,
                   max_keep=max_keep, seed=seed)
    keys = listed_keys(picks, block_size, q.shape[1], k.shape[1])
    return keys if pool is None else keys + num_blocks(k.shape[1], pool)

"""A brute-force oracle for "asa" and "asa_gt", written from the ops' docstrings.

Per (batch, head), in float64 numpy: the sampled positions of every block (numpy
default_rng(seed) for queries, seed + 1 for keys, one `choice` per block, with replacement
only in a block shorter than `samples`); softmax of sampled queries against all sampled keys
with scale 1/sqrt(D); block importance = the max over the two blocks' samples, normalised per
query block; keep the best blocks (ties to the lower block) until their mass reaches tau,
at least max(1, ceil(min_keep·nK)) and at most ceil(max_keep·nK). Query i attends, in one
dense softmax, to every token of its block's kept blocks; asa_gt also to the means of keys
and values over windows of `pool` tokens, with logit bias ln(window size).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def positions(tokens, block_size, samples, seed):
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, tokens, block_size):
        count = min(block_size, tokens - start)
        out.append(start + rng.choice(count, size=samples, replace=count < samples))
    return np.array(out)


def asa_mask(q, k, block_size, samples, tau, min_keep, max_keep, seed) -> np.ndarray:
    """bool [B, H, Nq, Nk]."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    batch, q_tokens, heads, dim = q.shape
    kv_tokens, kv_heads = k.shape[1], k.shape[2]
    q_pos = positions(q_tokens, block_size, samples, seed)
    k_pos = positions(kv_tokens, block_size, samples, seed + 1)
    key_blocks = len(k_pos)
    most = max(1, math.ceil(max_keep * key_blocks))
    fewest = min(most, max(1, math.ceil(min_keep * key_blocks)))
    mask = np.zeros((batch, heads, q_tokens, kv_tokens), bool)
    for b, h in np.ndindex(batch, heads):
        kv_head = h // (heads // kv_heads)
        logits = q[b, q_pos.reshape(-1), h] @ k[b, k_pos.reshape(-1), kv_head].T / np.sqrt(dim)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        blocks = probs.reshape(len(q_pos), samples, key_blocks, samples).max(axis=(1, 3))
        blocks /= blocks.sum(1, keepdims=True)
        for p in range(len(q_pos)):
            ranked = sorted(range(key_blocks), key=lambda j: (-blocks[p, j], j))
            kept, mass = [], 0.0
            for j in ranked:
                if len(kept) >= most or (len(kept) >= fewest and mass >= tau):
                    break
                kept.append(j)
                mass += blocks[p, j]
            for j in kept:
                mask[b, h, p * block_size:(p + 1) * block_size,
                     j * block_size:(j + 1) * block_size] = True
    return mask


def _attention(q, k, v, mask, extra_keys=None, extra_values=None, extra_bias=None):
    heads, kv_heads = q.shape[2], k.shape[2]
    group = heads // kv_heads
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, jnp.repeat(k, group, 2)) / np.sqrt(q.shape[-1])
    logits = jnp.where(mask, logits, -jnp.inf)
    values = jnp.repeat(v, group, 2)
    if extra_keys is not None:
        extra = jnp.einsum("bqhd,bkhd->bhqk", q, jnp.repeat(extra_keys, group, 2))
        logits = jnp.concatenate([logits, extra / np.sqrt(q.shape[-1]) + extra_bias], -1)
        values = jnp.concatenate([values, jnp.repeat(extra_values, group, 2)], 1)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), values)


def _mask_callback(q, k, **prober):
    shape = jax.ShapeDtypeStruct((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), jnp.bool_)
    return jax.pure_callback(lambda q, k: asa_mask(q, k, **prober), shape,
                             jax.lax.stop_gradient(q), jax.lax.stop_gradient(k))


PROBER = ("block_size", "samples", "tau", "min_keep", "max_keep", "seed")


@functools.partial(jax.jit, static_argnames=PROBER)
def asa_oracle(q, k, v, *, block_size, samples, tau, min_keep=0.05, max_keep=0.5, seed=0):
    mask = _mask_callback(q, k, block_size=block_size, samples=samples, tau=tau,
                          min_keep=min_keep, max_keep=max_keep, seed=seed)
    return _attention(q, k, v, mask)


@functools.partial(jax.jit, static_argnames=(*PROBER, "pool"))
def asa_gt_oracle(q, k, v, *, block_size, samples, tau, pool, min_keep=0.05, max_keep=0.5,
                  seed=0):
    mask = _mask_callback(q, k, block_size=block_size, samples=samples, tau=tau,
                          min_keep=min_keep, max_keep=max_keep, seed=seed)
    windows = [(s, min(s + pool, k.shape[1])) for s in range(0, k.shape[1], pool)]
    pooled_k = jnp.stack([k[:, a:b].mean(1) for a, b in windows], 1)
    pooled_v = jnp.stack([v[:, a:b].mean(1) for a, b in windows], 1)
    bias = jnp.log(jnp.array([b - a for a, b in windows], jnp.float32))
    return _attention(q, k, v, mask, pooled_k, pooled_v, bias)

"""A brute-force oracle for "topk_block", written from the op's docstring.

Per (batch, head): cut queries and keys into blocks of b tokens (the last one partial); a
block's pooled vector is the plain mean of its tokens. Non-causal, query block p ranks all
key blocks by mean(q of p) · mean(k of j), highest first, ties to the lower j, and keeps K of
them; with `local`, block p is kept first and the other K - 1 are the best of the rest.
Causal: p keeps itself and the best K - 1 of the blocks j < p ranked by mean(q of p - 1) ·
mean(k of j) (fewer when p < K - 1). Query i then attends, in one dense softmax with scale
1/sqrt(D), to every token of its block's kept blocks (causal: only keys j <= i).

The mask is computed in numpy (float64) from the inputs' values through a callback, so the
oracle stays differentiable with jax (the selection has no gradient).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _ranked(scores: dict[int, float]) -> list[int]:
    """Block ids by descending score, ties to the lower id."""
    return sorted(scores, key=lambda j: (-scores[j], j))


def kept_blocks(q, k, block_size, topk, local, causal) -> list:
    """kept[batch][head][query block] = set of key blocks (numpy q [B, Nq, H, D],
    k [B, Nk, Hkv, D])."""
    batch, q_tokens, heads, _ = q.shape
    kv_tokens, kv_heads = k.shape[1], k.shape[2]
    q_starts = range(0, q_tokens, block_size)
    k_starts = range(0, kv_tokens, block_size)
    kept = []
    for b in range(batch):
        per_head = []
        for h in range(heads):
            kv_head = h // (heads // kv_heads)
            q_means = [q[b, s:s + block_size, h].mean(0) for s in q_starts]
            k_means = [k[b, s:s + block_size, kv_head].mean(0) for s in k_starts]
            per_block = []
            for p in range(len(q_means)):
                if causal:
                    scores = {j: float(q_means[p - 1] @ k_means[j]) for j in range(p)}
                    per_block.append({p, *_ranked(scores)[:topk - 1]})
                elif local:
                    scores = {j: float(q_means[p] @ k_means[j])
                              for j in range(len(k_means)) if j != p}
                    per_block.append({p, *_ranked(scores)[:topk - 1]})
                else:
                    scores = {j: float(q_means[p] @ k_means[j]) for j in range(len(k_means))}
                    per_block.append(set(_ranked(scores)[:topk]))
            per_head.append(per_block)
        kept.append(per_head)
    return kept


def topk_block_mask(q, k, block_size, topk, local=False, causal=False) -> np.ndarray:
    """bool [B, H, Nq, Nk]: whether query i attends to key j."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    batch, q_tokens, heads, _ = q.shape
    kv_tokens = k.shape[1]
    mask = np.zeros((batch, heads, q_tokens, kv_tokens), bool)
    for b, per_head in enumerate(kept_blocks(q, k, block_size, topk, local, causal)):
        for h, per_block in enumerate(per_head):
            for p, blocks in enumerate(per_block):
                for j in blocks:
                    mask[b, h, p * block_size:(p + 1) * block_size,
                         j * block_size:(j + 1) * block_size] = True
    if causal:
        mask &= np.tril(np.ones((q_tokens, kv_tokens), bool))
    return mask


def masked_dense_attention(q, k, v, mask):
    """Dense softmax attention with a boolean mask [B, H, Nq, Nk], float32."""
    heads, kv_heads = q.shape[2], k.shape[2]
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    probs = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "local", "causal"))
def topk_block_oracle(q, k, v, *, block_size, topk, local=False, causal=False):
    """The oracle's output [B, Nq, H, D] (float32), differentiable in q, k and v."""
    shape = jax.ShapeDtypeStruct((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), jnp.bool_)
    mask = jax.pure_callback(
        lambda q, k: topk_block_mask(q, k, block_size, topk, local, causal), shape,
        jax.lax.stop_gradient(q), jax.lax.stop_gradient(k))
    return masked_dense_attention(q, k, v, mask)

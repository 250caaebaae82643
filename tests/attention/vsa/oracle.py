"""A brute-force oracle for "vsa", written from the op's docstring (FastVideo's VSA without
the gate): fine = attention of each query over the tokens of its tile's top-K key tiles
(the `topk_block` oracle's mask: ranked by mean query · mean key of the tiles), coarse =
dense attention between tile means (pooled with an explicit averaging matrix), copied to
every token of the query tile; output = fine + coarse."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests.attention.topk_block.oracle import topk_block_oracle


def averaging_matrix(tokens: int, block_size: int) -> np.ndarray:
    """[ceil(N / B), N]: row b averages the tokens t with t // B == b."""
    tiles = -(-tokens // block_size)
    matrix = np.zeros((tiles, tokens), np.float32)
    for t in range(tokens):
        matrix[t // block_size, t] = 1.0
    return matrix / matrix.sum(1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("block_size", "topk"))
def vsa_oracle(q, k, v, *, block_size, topk):
    """[B, Nq, H, D] float32, differentiable in q, k and v."""
    heads, kv_heads = q.shape[2], k.shape[2]
    pool_q = averaging_matrix(q.shape[1], block_size)
    pool_k = averaging_matrix(k.shape[1], block_size)
    q_tiles = jnp.einsum("tn,bnhd->bthd", pool_q, q)
    k_tiles = jnp.repeat(jnp.einsum("tn,bnhd->bthd", pool_k, k), heads // kv_heads, axis=2)
    v_tiles = jnp.repeat(jnp.einsum("tn,bnhd->bthd", pool_k, v), heads // kv_heads, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q_tiles, k_tiles) / np.sqrt(q.shape[-1])
    coarse_tiles = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v_tiles)
    coarse = jnp.einsum("tn,bthd->bnhd", (pool_q > 0).astype(np.float32), coarse_tiles)
    return topk_block_oracle(q, k, v, block_size=block_size, topk=topk) + coarse

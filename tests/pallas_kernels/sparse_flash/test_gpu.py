"""The sparse-flash GPU kernels (interpret mode) over arbitrary index tables: against the
plain-JAX block-sparse definition, which is itself held to dense attention with the block
mask written out (seed-papers K1: every block = dense; random lists = dense with a -inf block
mask)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla.attention.common.block_sparse import attend_blocks
from lla.attention.common.block_sparse_pallas import attend_gpu
from lla.pallas_kernels.sparse_flash import gpu
from tests.attention.op_test_base import random_qkv, relative_error
from tests.attention.topk_block.oracle import masked_dense_attention


def block_mask(indices, q_tokens, kv_tokens, block_size, causal):
    """bool [B, H, Nq, Nk] from an index table [B, H, nQ, K] (-1 empty)."""
    batch, heads = indices.shape[:2]
    mask = np.zeros((batch, heads, q_tokens, kv_tokens), bool)
    for b, h, p in np.ndindex(*indices.shape[:3]):
        for j in indices[b, h, p]:
            if j >= 0:
                mask[b, h, p * block_size:(p + 1) * block_size,
                     j * block_size:(j + 1) * block_size] = True
    return mask & np.tril(np.ones((q_tokens, kv_tokens), bool)) if causal else mask


def table_for(shape, block_size, topk, causal, seed=0):
    """A random table [B, H, nQ, K]: 1 to K distinct blocks per list in random slots, the
    rest -1; causal: past blocks only, the own block always in."""
    batch, q_tokens, kv_tokens, heads = shape[:4]
    q_blocks, kv_blocks = -(-q_tokens // block_size), -(-kv_tokens // block_size)
    rng = np.random.default_rng(seed)
    table = np.full((batch, heads, q_blocks, topk), -1, np.int32)
    for b, h, p in np.ndindex(batch, heads, q_blocks):
        allowed = np.arange(p) if causal else np.arange(kv_blocks)
        size = rng.integers(0 if causal else 1, min(topk - causal, len(allowed)) + 1)
        chosen = [*rng.choice(allowed, size, replace=False), *([p] if causal else [])]
        table[b, h, p, rng.choice(topk, len(chosen), replace=False)] = chosen
    return jnp.asarray(table)


@pytest.mark.parametrize(
    ("shape", "block_size", "topk", "causal", "chunk"),
    [
        ((2, 45, 45, 2, 2, 8), 4, 5, False, 1),
        ((1, 45, 61, 4, 2, 8), 4, 6, False, 3),  # cross-attention, GQA, partial tiles
        ((1, 50, 50, 2, 1, 8), 5, 4, True, 2),
    ],
)
def test_kernels_match_the_definition_on_random_tables(shape, block_size, topk, causal,
                                                       chunk):
    q, k, v = random_qkv(shape)
    indices = table_for(shape, block_size, topk, causal)
    config = gpu.make_config(block_size, topk, shape[3], shape[4], shape[1], shape[2],
                             shape[5], causal=causal, interpret=True, chunk=chunk)
    cotangent = jax.random.normal(jax.random.key(3), q.shape)
    mask = block_mask(np.asarray(indices), shape[1], shape[2], block_size, causal)
    with jax.default_matmul_precision("highest"):
        runs = [jax.vjp(fn, q, k, v) for fn in (
            lambda *x: attend_gpu(*x, indices, config),
            lambda *x: attend_blocks(*x, indices, block_size=block_size, causal=causal),
            lambda *x: masked_dense_attention(*x, mask))]
    (kernel, kernel_vjp), (definition, definition_vjp), (dense, dense_vjp) = runs
    assert relative_error(definition, dense) < 1e-5
    assert relative_error(kernel, definition) < 1e-5
    for got, want, oracle in zip(kernel_vjp(cotangent), definition_vjp(cotangent),
                                 dense_vjp(cotangent), strict=True):
        assert relative_error(want, oracle) < 1e-5
        assert relative_error(got, want) < 1e-5


def test_all_blocks_listed_is_dense():
    shape = (1, 30, 30, 2, 2, 8)
    q, k, v = random_qkv(shape)
    indices = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32)[::-1], (1, 2, 8, 8))
    config = gpu.make_config(4, 8, 2, 2, 30, 30, 8, interpret=True)
    with jax.default_matmul_precision("highest"):
        dense = masked_dense_attention(q, k, v, np.ones((30, 30), bool))
    assert relative_error(attend_gpu(q, k, v, indices, config), dense) < 1e-5


def test_tiling_errors_name_the_field():
    with pytest.raises(ValueError, match="chunk 3 must divide topk 4"):
        gpu.make_config(16, 4, 2, 2, 64, 64, 16, chunk=3)

"""The sparse-level selection kernel picks exactly what the XLA selection picks (interpret)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla.attention.llsa import hierarchy
from lla.pallas_kernels.llsa import gpu, selection


def run_both(q_level, k_level, parent_picks, block_size, topk):
    batch, tokens, heads, dim = q_level.shape
    kv_heads = k_level.shape[2]
    config = gpu.make_config(block_size, topk, 2, heads, kv_heads, tokens * block_size, dim,
                             interpret=True)
    rows = parent_picks.reshape(batch * heads, *parent_picks.shape[2:])
    blocks = k_level.reshape(batch, tokens // block_size, block_size, kv_heads, dim)
    kernel = selection.select_children(q_level, blocks, rows, config)
    expected = hierarchy.select_children(
        q_level, jnp.repeat(k_level, heads // kv_heads, axis=2), parent_picks, block_size,
        topk)
    return np.asarray(kernel), np.asarray(expected).reshape(kernel.shape)


def random_parent_picks(batch, heads, parents, num_blocks, topk, seed):
    rng = np.random.default_rng(seed)
    picks = [[np.sort(rng.choice(num_blocks, topk, replace=False)) for _ in range(parents)]
             for _ in range(batch * heads)]
    return jnp.asarray(np.array(picks).reshape(batch, heads, parents, topk), jnp.int32)


@pytest.mark.parametrize(("block_size", "topk", "heads", "kv_heads"),
                         [(4, 2, 2, 2), (4, 3, 4, 2), (8, 4, 3, 1)])
def test_kernel_matches_xla_selection(block_size, topk, heads, kv_heads):
    tokens, dim = 8 * block_size, 16
    keys = jax.random.split(jax.random.key(block_size + topk), 2)
    q_level = jax.random.normal(keys[0], (2, tokens, heads, dim))
    k_level = jax.random.normal(keys[1], (2, tokens, kv_heads, dim))
    parents = random_parent_picks(2, heads, tokens // block_size, tokens // block_size, topk,
                                  seed=topk)
    kernel, expected = run_both(q_level, k_level, parents, block_size, topk)
    np.testing.assert_array_equal(kernel, expected)
    assert np.all(np.diff(kernel, axis=-1) > 0)  # ascending, distinct


def test_ties_go_to_the_lower_token_index():
    """All keys equal: every candidate ties, so the K lowest candidate tokens win."""
    block_size, topk, tokens = 4, 2, 16
    q_level = jnp.ones((1, tokens, 1, 8))
    k_level = jnp.ones((1, tokens, 1, 8))
    parents = jnp.asarray([[[[1, 3]] * (tokens // block_size)]], jnp.int32)
    kernel, expected = run_both(q_level, k_level, parents, block_size, topk)
    np.testing.assert_array_equal(kernel, expected)
    assert np.all(kernel == np.array([4, 5]))

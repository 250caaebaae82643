"""The block-selection kernel (interpret mode) against topk_block's XLA selection, which the
topk_block oracle tests: the same picks, slot for slot, across query tiles, key chunks, a
K that is not a power of two, partial blocks, GQA, ties, `local` and `causal`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla.attention.topk_block import pallas_gpu, selection
from lla.pallas_kernels.sparse_flash import selection as kernel


def qkv(tokens, heads=2, kv_heads=1, dim=16, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    return (jax.random.normal(keys[0], (2, tokens, heads, dim)),
            jax.random.normal(keys[1], (2, tokens, kv_heads, dim)))


def both(q, k, chunk=None, **static):
    """(kernel picks, XLA picks); `chunk` overrides the key chunk to force several chunks."""
    want = selection.select(q, k, **static)
    if chunk is None:
        got = pallas_gpu.select(q, k, interpret=True, **static)
    else:
        q_means, k_means = selection.ranking_means(q, k, static["block_size"],
                                                   static["causal"])
        config = kernel.make_config(static["topk"], q.shape[2], k.shape[2],
                                    q_means.shape[1], k_means.shape[1], q.shape[3],
                                    causal=static["causal"], local=static["local"],
                                    interpret=True)
        got = kernel.select_blocks(q_means, k_means, dataclasses.replace(config, chunk=chunk))
    return np.asarray(got), np.asarray(want)


# 37 x 4 = 148 tokens: 37 blocks, 3 query tiles of 16 (the last one partial), 3 key chunks
# of 16 with the chunk override (the last one partial); K = 5 pads to 8 slots.
@pytest.mark.parametrize(("tokens", "topk", "chunk"), [(148, 5, 16), (148, 5, None),
                                                       (150, 16, 16), (64, 16, None)])
@pytest.mark.parametrize(("local", "causal"), [(False, False), (True, False), (False, True)])
def test_kernel_picks_equal_the_xla_selection(tokens, topk, chunk, local, causal):
    q, k = qkv(tokens)
    got, want = both(q, k, chunk, block_size=4, topk=topk, local=local, causal=causal)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    if causal:  # early query blocks have fewer past blocks than K: empty slots at the end
        assert (got[:, :, 0, 1:] == -1).all()


def test_ties_go_to_the_lower_block_across_chunks():
    """Every key block equal: each query block keeps blocks 0..K-1, though the running best
    and later chunks tie at every step."""
    q, _ = qkv(128)
    k = jnp.ones((2, 128, 1, 16))
    got, want = both(q, k, 16, block_size=2, topk=6, local=False, causal=False)
    np.testing.assert_array_equal(got, want)
    assert (got == np.arange(6)).all()


def test_gqa_rows_read_their_kv_head():
    q, k = qkv(96, heads=4, kv_heads=2)
    got, want = both(q, k, 16, block_size=2, topk=7, local=False, causal=False)
    np.testing.assert_array_equal(got, want)
    assert not (got[:, 0] == got[:, 2]).all()  # heads of different kv heads differ


@pytest.mark.parametrize(("block_scores", "want"), [
    # running {0: 5, 1: 1, 2: 1} after chunk 0; block 16 (3) evicts the higher of the tied
    # worst, block 2
    ({0: 5.0, **dict.fromkeys(range(1, 16), 1.0), 16: 3.0}, [0, 1, 16]),
    # running {0: 5, 2: 2, 1: 1}; block 16 (3) evicts block 1, then block 17 (2) ties the
    # new worst, block 2, and stays out: the lower block wins
    ({0: 5.0, 1: 1.0, 2: 2.0, 16: 3.0, 17: 2.0}, [0, 2, 16]),
])
def test_exact_ties_in_the_merge_keep_the_lower_block(block_scores, want):
    """Exact scores q̄·k̄ = c_j (q̄ = e0, k̄_j = c_j·e0) with ties at the K-th place, across
    key chunks of 16 blocks of 2 tokens."""
    values = np.zeros(96, np.float32)  # per token: 48 blocks of 2
    for block, score in block_scores.items():
        values[2 * block:2 * block + 2] = score
    k = jnp.zeros((2, 96, 1, 16)).at[:, :, 0, 0].set(jnp.asarray(values))
    q = jnp.zeros((2, 96, 2, 16)).at[..., 0].set(1.0)
    got, expected = both(q, k, 16, block_size=2, topk=3, local=False, causal=False)
    np.testing.assert_array_equal(got, expected)
    assert (got == want).all()


def brute_force_past_picks(q_means, k_means, topk, stride):
    """Per query block b: the K best key blocks j < b // stride by q̄·k̄ (ties to the lower
    j), ascending, -1 padded — in numpy, [Bt, H, nQ, K]."""
    q_means, k_means = np.asarray(q_means, np.float64), np.asarray(k_means, np.float64)
    batch, query_blocks, heads, _ = q_means.shape
    group = heads // k_means.shape[2]
    picks = np.full((batch, heads, query_blocks, topk), -1)
    for b, h, i in np.ndindex(batch, heads, query_blocks):
        visible = np.arange(i // stride)
        scores = k_means[b, visible, h // group] @ q_means[b, i, h]
        best = sorted(visible[np.lexsort((visible, -scores))][:topk])
        picks[b, h, i, :len(best)] = best
    return picks


@pytest.mark.parametrize("stride", [1, 3])
def test_past_stride_keeps_the_best_blocks_wholly_before_each_query(stride):
    """LLSA's causal coarsest level: block b picks among j < b // R only, none forced; 37
    query blocks in 3 tiles, 40 key blocks in 3 chunks of 16 (the early tiles stream fewer),
    K = 5, GQA 2:1."""
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    q_means = jax.random.normal(keys[0], (2, 37, 2, 16))
    k_means = jax.random.normal(keys[1], (2, 40, 1, 16))
    config = kernel.make_config(5, 2, 1, 37, 40, 16, past_stride=stride, interpret=True)
    got = kernel.select_blocks(q_means, k_means, dataclasses.replace(config, chunk=16))
    want = brute_force_past_picks(q_means, k_means, 5, stride)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert (np.asarray(got)[:, :, :stride] == -1).all()  # nothing wholly in the past yet


def test_past_stride_refuses_forced_blocks():
    with pytest.raises(ValueError, match="past_stride forces no block"):
        kernel.make_config(4, 2, 1, 8, 8, 16, past_stride=2, causal=True)

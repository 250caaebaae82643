"""The sparse-flash GPU kernels (interpret mode) over arbitrary index tables: against the
plain-JAX block-sparse definition, which is itself held to dense attention with the block
mask written out (seed-papers K1: every block = dense; random lists = dense with a -inf block
mask)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla.attention.common.block_sparse import Summary, attend_blocks
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


def assert_kernel_definition_dense_agree(kernel, definition, dense, args, cotangent):
    """Outputs and VJPs (f32, highest precision): the definition equals the dense oracle and
    the kernel equals the definition, to 1e-5 relative."""
    with jax.default_matmul_precision("highest"):
        runs = [jax.vjp(fn, *args) for fn in (kernel, definition, dense)]
    (got, got_vjp), (want, want_vjp), (oracle, oracle_vjp) = runs
    assert relative_error(want, oracle) < 1e-5
    assert relative_error(got, want) < 1e-5
    for got_grad, want_grad, oracle_grad in zip(got_vjp(cotangent), want_vjp(cotangent),
                                                oracle_vjp(cotangent), strict=True):
        assert relative_error(want_grad, oracle_grad) < 1e-5
        assert relative_error(got_grad, want_grad) < 1e-5


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
    assert_kernel_definition_dense_agree(
        lambda *x: attend_gpu(*x, indices, config),
        lambda *x: attend_blocks(*x, indices, block_size=block_size, causal=causal),
        lambda *x: masked_dense_attention(*x, mask), (q, k, v), cotangent)


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
    with pytest.raises(ValueError, match="summary_tile 4 must divide the 6 summary tokens"):
        gpu.make_config(16, 4, 2, 2, 64, 64, 16, summary_tokens=6, summary_tile=4)
    with pytest.raises(ValueError, match="summary tokens are always visible"):
        gpu.make_config(16, 4, 2, 2, 64, 64, 16, summary_tokens=2, causal=True)


def test_backward_warps_follow_the_block_size():
    """8 warps in dQ and dK/dV at B = 128 (ASA's block, where they were measured), 4 in
    the forward and at smaller blocks; each kernel kind gets its own launch parameters."""
    asa_like = gpu.make_config(128, 4, 6, 6, 1024, 1024, 64)
    assert asa_like.compiler_params(backward=True).num_warps == 8
    assert asa_like.compiler_params().num_warps == 4
    assert gpu.make_config(64, 4, 6, 6, 1024, 1024, 64).backward_num_warps == 4
    tuned = gpu.make_config(128, 4, 6, 6, 1024, 1024, 64, backward_num_warps=2)
    assert tuned.compiler_params(1, backward=True).num_warps == 2


def dense_with_summary(q, k, v, mask, summary: Summary):
    """Dense softmax over the masked keys and every summary token (its bias added)."""
    heads, kv_heads = q.shape[2], k.shape[2]
    keys = jnp.repeat(jnp.concatenate([k, summary.keys], 1), heads // kv_heads, axis=2)
    values = jnp.repeat(jnp.concatenate([v, summary.values], 1), heads // kv_heads, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, keys) * q.shape[-1] ** -0.5
    bias = jnp.repeat(summary.bias, heads // kv_heads, axis=2).transpose(0, 2, 1)
    logits = jnp.concatenate([jnp.where(mask, logits[..., :k.shape[1]], -jnp.inf),
                              logits[..., k.shape[1]:] + bias[:, :, None]], axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), values)


def random_summary(batch, tokens, kv_heads, dim, seed=4):
    keys = jax.random.split(jax.random.key(seed), 3)
    return Summary(jax.random.normal(keys[0], (batch, tokens, kv_heads, dim)),
                   jax.random.normal(keys[1], (batch, tokens, kv_heads, dim)),
                   jnp.log(jax.random.randint(keys[2], (batch, tokens, kv_heads), 1, 9)
                           .astype(jnp.float32)))


@pytest.mark.parametrize(("shape", "summary_tokens", "tuning"), [
    ((1, 45, 45, 4, 2, 8), 6, dict(summary_tile=2, summary_splits=3, chunk=2)),
    ((2, 30, 30, 2, 2, 8), 5, {}),
])
def test_summary_tokens_join_the_softmax(shape, summary_tokens, tuning):
    """K2: always-visible summary tokens with their bias, in the kernels (several summary
    tiles and dK/dV splits), the definition and dense attention over keys + summaries."""
    config = gpu.make_config(4, 4, shape[3], shape[4], shape[1], shape[2], shape[5],
                             summary_tokens=summary_tokens, interpret=True, **tuning)
    assert_summary_tokens_join_the_softmax(attend_gpu, config, shape, summary_tokens)


def assert_summary_tokens_join_the_softmax(attend, config, shape, summary_tokens):
    """`attend(q, k, v, indices, config, summary)` (blocks of 4, K = config.topk) on a
    random table and random summaries: against the definition and dense attention."""
    q, k, v = random_qkv(shape)
    summary = random_summary(shape[0], summary_tokens, shape[4], shape[5])
    indices = table_for(shape, 4, config.topk, False)
    mask = block_mask(np.asarray(indices), shape[1], shape[2], 4, False)
    cotangent = jax.random.normal(jax.random.key(3), q.shape)
    assert_kernel_definition_dense_agree(
        lambda q, k, v, sk, sv: attend(q, k, v, indices, config,
                                       Summary(sk, sv, summary.bias)),
        lambda q, k, v, sk, sv: attend_blocks(q, k, v, indices, block_size=4,
                                              summary=Summary(sk, sv, summary.bias)),
        lambda q, k, v, sk, sv: dense_with_summary(q, k, v, mask,
                                                   Summary(sk, sv, summary.bias)),
        (q, k, v, summary.keys, summary.values), cotangent)


def test_a_constant_group_equals_its_summary_with_log_count_bias():
    assert_constant_groups_equal_their_summaries(
        attend_gpu, gpu.make_config(4, 4, 2, 1, 32, 32, 8, summary_tokens=4, interpret=True))


def assert_constant_groups_equal_their_summaries(attend, config):
    """K2's identity: keys and values constant over each of the last 4 blocks; listing only
    the first 4 blocks and adding each constant block as one summary token with bias ln 4
    gives dense attention over all 32 tokens, in the definition and in `attend(q, k, v,
    indices, config, summary)` (config: blocks of 4, K = 4, H = 2, Hkv = 1, N = 32, D = 8,
    S = 4)."""
    q, k, v = random_qkv((1, 32, 32, 2, 1, 8))
    k = k.at[:, 16:].set(jnp.repeat(k[:, 16::4], 4, axis=1))
    v = v.at[:, 16:].set(jnp.repeat(v[:, 16::4], 4, axis=1))
    summary = Summary(k[:, 16::4], v[:, 16::4], jnp.full((1, 4, 1), np.log(4.0)))
    indices = jnp.broadcast_to(jnp.arange(4, dtype=jnp.int32), (1, 2, 8, 4))
    with jax.default_matmul_precision("highest"):
        dense = masked_dense_attention(q, k, v, np.ones((32, 32), bool))
        for out in (attend_blocks(q, k, v, indices, block_size=4, summary=summary),
                    attend(q, k, v, indices, config, summary)):
            assert relative_error(out, dense) < 1e-5

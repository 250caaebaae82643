"""Dense attention's block-causal mask, `causal_block_size`: against a brute force with the
mask written out entry by entry (forward and VJP, f32, odd sizes, a partial last block, chunk
boundaries that cut blocks), its limits (1 is causal, >= N non-causal), combined with segment
ids, kv_lengths and Nq != Nk, argument errors, cuDNN's reasons and (on a GPU) its mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from tests.attention.op_test_base import random_qkv, relative_error, segment_ids_for

ON_GPU = jax.default_backend() == "gpu"
SMALL_CHUNKS = dict(chunk_q=8, chunk_k=16)


def brute_force(q, k, v, block, *, segment_ids=None, kv_lengths=None):
    """softmax over the visible keys, the [B, Nq, Nk] mask built entry by entry in numpy:
    key j of row b is visible to query i iff j // block <= i // block, their segment ids
    agree and j < kv_lengths[b]. Rows that see nothing output 0."""
    batch, q_tokens, heads, head_dim = q.shape
    kv_tokens, groups = k.shape[1], heads // k.shape[2]
    q_ids, kv_ids = (None, None) if segment_ids is None else map(np.asarray, segment_ids)
    lengths = np.full(batch, kv_tokens) if kv_lengths is None else np.asarray(kv_lengths)
    mask = np.zeros((batch, q_tokens, kv_tokens), bool)
    for b in range(batch):
        for i in range(q_tokens):
            for j in range(kv_tokens):
                mask[b, i, j] = (j // block <= i // block and j < lengths[b] and (
                    q_ids is None or q_ids[b, i] == kv_ids[b, j]))
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / np.sqrt(head_dim)
    visible = jnp.asarray(mask)[:, None]
    probs = jnp.where(visible, jax.nn.softmax(jnp.where(visible, logits, -jnp.inf), -1), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision="highest")


def output_and_vjp(fn, q, k, v, cotangent):
    """(fn(q, k, v), its VJP of `cotangent`), jitted as one program."""
    def run(q, k, v, cotangent):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(cotangent)

    return jax.jit(run)(q, k, v, cotangent)


def dense(block, **kwargs):
    return lambda q, k, v: attention.dot_product_attention(
        q, k, v, causal=True, causal_block_size=block, implementation="xla", **kwargs)


def check_against_brute_force(shape, block, *, segment_ids=None, kv_lengths=None):
    q, k, v = random_qkv(shape)
    cotangent = jax.random.normal(jax.random.key(5), q.shape)
    extra = {} if kv_lengths is None else {"kv_lengths": jnp.asarray(kv_lengths, jnp.int32)}
    with attention.tuning("dense", "xla", **SMALL_CHUNKS):
        out, grads = output_and_vjp(dense(block, segment_ids=segment_ids, **extra),
                                    q, k, v, cotangent)
    expected, expected_grads = output_and_vjp(
        lambda q, k, v: brute_force(q, k, v, block, segment_ids=segment_ids,
                                    kv_lengths=kv_lengths), q, k, v, cotangent)
    error = relative_error(out, expected)
    assert error < 1e-5, f"forward relative error {error:.2e}"
    for name, grad, expected_grad in zip("qkv", grads, expected_grads, strict=True):
        error = relative_error(grad, expected_grad)
        assert error < 1e-5, f"d{name} relative error {error:.2e}"


@pytest.mark.parametrize(
    ("shape", "block"),
    [
        ((2, 45, 45, 4, 2, 12), 9),    # 5 whole blocks of 9; chunks of 8 / 16 cut them
        ((1, 45, 45, 3, 3, 8), 7),     # N not a multiple of the block: the last holds 3
    ],
)
def test_matches_the_brute_force(shape, block):
    check_against_brute_force(shape, block)


def test_queries_shorter_than_keys_are_top_left_aligned():
    """Nq != Nk: query i sees key j iff j // c <= i // c, as for token causal."""
    check_against_brute_force((1, 21, 37, 2, 2, 8), 4)


def test_composes_with_segment_ids_and_kv_lengths():
    """All masks apply: the block's, the segments' (which cut blocks) and the lengths'."""
    ids = segment_ids_for(2, 40, segments=3)
    check_against_brute_force((2, 40, 40, 2, 1, 8), 6, segment_ids=(ids, ids),
                              kv_lengths=[40, 17])


def test_block_one_is_token_causal_and_a_block_of_n_or_more_is_not_causal():
    q, k, v = random_qkv((1, 37, 37, 2, 2, 8))
    with attention.tuning("dense", "xla", **SMALL_CHUNKS):
        causal = attention.dot_product_attention(q, k, v, causal=True)
        full = attention.dot_product_attention(q, k, v)
        np.testing.assert_array_equal(dense(1)(q, k, v), causal)
        for block in (37, 64):
            np.testing.assert_array_equal(dense(block)(q, k, v), full)


def test_a_key_block_is_seen_only_from_its_own_block_on():
    """Changing the keys and values of block 2 (tokens 8..11 of blocks of 4) changes the
    outputs of queries 8.. and none before."""
    q, k, v = random_qkv((1, 22, 22, 2, 2, 8))
    run = jax.jit(dense(4))
    before = run(q, k, v)
    after = run(q, k.at[:, 8:12].add(1.0), v.at[:, 8:12].add(1.0))
    np.testing.assert_array_equal(after[:, :8], before[:, :8])
    assert np.abs(after[:, 8:] - before[:, 8:]).min(axis=(0, 2, 3)).min() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(causal=True, causal_block_size=0), "causal_block_size must be an int >= 1; got 0"),
        (dict(causal=True, causal_block_size=2.0), "causal_block_size must be an int >= 1"),
        (dict(causal=True, causal_block_size=True), "causal_block_size must be an int >= 1"),
        (dict(causal_block_size=4), r"causal_block_size=4 needs causal=True .* pass "
                                    r"causal=True, or leave causal_block_size at 1"),
    ],
)
def test_rejects_bad_block_sizes_saying_what_would_work(kwargs, message):
    q, k, v = random_qkv((1, 16, 16, 2, 2, 8))
    with pytest.raises(ValueError, match=message):
        attention.dot_product_attention(q, k, v, **kwargs)


def test_dense_declares_block_causal_and_the_default_is_off():
    assert attention.get("dense").capabilities.block_causal
    assert not attention.Capabilities().block_causal
    with pytest.raises(ValueError, match="block_causal needs causal"):
        attention.Capabilities(block_causal=True)


def test_cudnn_says_why_it_cannot_combine_blocks_with_kv_lengths():
    q, k, v = random_qkv((2, 16, 16, 2, 2, 8), jnp.bfloat16)
    with pytest.raises(attention.NoImplementationError,
                       match=r"cudnn: .*causal_block_size 4 with kv_lengths not supported"):
        attention.dot_product_attention(q, k, v, causal=True, causal_block_size=4,
                                        kv_lengths=jnp.asarray([16, 9], jnp.int32),
                                        implementation="cudnn")


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="cuDNN needs a GPU")
def test_cudnn_block_causal_forward_and_vjp():
    """bf16 on cuDNN against the f32 brute force; even lengths (jax's cuDNN backward rejects
    odd ones), 4 blocks of 64."""
    q, k, v = random_qkv((2, 256, 256, 4, 2, 64), jnp.bfloat16)
    cotangent = jax.random.normal(jax.random.key(5), q.shape)
    out, grads = output_and_vjp(lambda q, k, v: attention.dot_product_attention(
        q, k, v, causal=True, causal_block_size=64, implementation="cudnn"),
        q, k, v, cotangent.astype(jnp.bfloat16))
    expected, expected_grads = output_and_vjp(
        lambda q, k, v: brute_force(q, k, v, 64),
        *(x.astype(jnp.float32) for x in (q, k, v)), cotangent)
    assert relative_error(out, expected) < 1e-2
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert relative_error(grad, expected_grad) < 2e-2

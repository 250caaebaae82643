"""Dense attention's decode path, `kv_lengths`: against a brute force with the mask written out
(forward and VJP), with causal and segment ids, across chunk boundaries, rows with no valid
key, argument errors; cuDNN's `key_value_seq_lengths` on a GPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from tests.attention.dense.test_block_causal import brute_force as block_brute_force
from tests.attention.dense.test_block_causal import output_and_vjp
from tests.attention.op_test_base import random_qkv, relative_error, segment_ids_for

ON_GPU = jax.default_backend() == "gpu"
SMALL_CHUNKS = dict(chunk_q=8, chunk_k=16)


def brute_force(q, k, v, kv_lengths, *, causal=False, segment_ids=None):
    """softmax over the visible keys with the mask written out entry by entry
    (`test_block_causal.brute_force`): key j of row b is visible to query i iff
    j < kv_lengths[b], j <= i when causal, and their segment ids agree."""
    return block_brute_force(q, k, v, 1 if causal else k.shape[1], segment_ids=segment_ids,
                             kv_lengths=kv_lengths)


def check_against_brute_force(shape, kv_lengths, *, implementation="xla", dtype=jnp.float32,
                              forward_bound=1e-5, grad_bound=1e-5, **kwargs):
    q, k, v = random_qkv(shape, dtype)
    kv_lengths = jnp.asarray(kv_lengths, jnp.int32)
    cotangent = jax.random.normal(jax.random.key(5), q.shape)
    with attention.tuning("dense", "xla", **SMALL_CHUNKS):
        out, grads = output_and_vjp(
            lambda q, k, v: attention.dot_product_attention(
                q, k, v, kv_lengths=kv_lengths, implementation=implementation, **kwargs),
            q, k, v, cotangent.astype(dtype))
    expected, expected_grads = output_and_vjp(
        lambda q, k, v: brute_force(q, k, v, kv_lengths, **kwargs),
        *(x.astype(jnp.float32) for x in (q, k, v)), cotangent)
    error = relative_error(out, expected)
    assert error < forward_bound, f"forward relative error {error:.2e}"
    for name, grad, expected_grad in zip("qkv", grads, expected_grads, strict=True):
        error = relative_error(grad, expected_grad)
        assert error < grad_bound, f"d{name} relative error {error:.2e}"


@pytest.mark.parametrize(
    ("shape", "kv_lengths"),
    [
        ((3, 1, 53, 4, 2, 8), [53, 17, 1]),    # decode: one query over a cache, GQA
        ((2, 5, 40, 2, 2, 12), [33, 16]),      # several queries; 16 = one whole key chunk
        ((2, 21, 37, 3, 1, 8), [31, 9]),       # odd sizes, lengths inside the 2nd/1st chunk
    ],
)
def test_matches_the_brute_force_across_chunk_boundaries(shape, kv_lengths):
    """Key chunks of 16 (query chunks of 8): the lengths cut chunks at other places than
    their ends, so a mask applied per chunk instead of per key fails."""
    check_against_brute_force(shape, kv_lengths)


def test_composes_with_causal_top_left_aligned():
    """A prefill into a cache longer than the prompt: causal over the first Nq keys, nothing
    past kv_lengths."""
    check_against_brute_force((2, 19, 50, 2, 2, 8), [19, 11], causal=True)


def test_composes_with_causal_and_segment_ids():
    q_ids = segment_ids_for(2, 30, segments=3)
    segments = (q_ids, q_ids)
    check_against_brute_force((2, 30, 30, 4, 2, 8), [30, 23], causal=True,
                              segment_ids=segments)


def test_a_row_with_no_valid_key_outputs_zeros_with_zero_gradients():
    q, k, v = random_qkv((2, 3, 20, 2, 2, 8))
    kv_lengths = jnp.asarray([0, 20], jnp.int32)

    def loss(q, k, v):
        out, lse = attention.dot_product_attention(q, k, v, kv_lengths=kv_lengths,
                                                   return_residuals=True)
        return (out ** 2).sum(), (out, lse)

    with attention.tuning("dense", "xla", **SMALL_CHUNKS):
        grads, (out, lse) = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    np.testing.assert_array_equal(out[0], 0.0)
    assert np.all(np.isneginf(lse[0])) and np.all(np.isfinite(lse[1]))
    assert np.abs(out[1]).max() > 0
    for grad in grads:
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(grad[0], 0.0)
        assert np.abs(grad[1]).max() > 0


def test_entries_past_the_length_are_never_read():
    """Huge values in the unfilled part of the cache change nothing."""
    q, k, v = random_qkv((2, 1, 24, 2, 2, 8))
    kv_lengths = jnp.asarray([5, 18], jnp.int32)
    past = jnp.arange(24)[None, :, None, None] >= kv_lengths[:, None, None, None]
    attend = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v,
                                                                      kv_lengths=kv_lengths))
    clean = attend(q, k, v)
    dirty = attend(q, jnp.where(past, 1e4, k), jnp.where(past, 1e4, v))
    np.testing.assert_array_equal(clean, dirty)


@pytest.mark.parametrize(
    ("kv_lengths", "message"),
    [
        (jnp.asarray([3], jnp.int32), r"kv_lengths must be an integer array \[2\].*shape \(1,\)"),
        (jnp.asarray([3.0, 4.0]), r"kv_lengths must be an integer array \[2\].*float32"),
        ([3, 4], r"kv_lengths must be an integer array \[2\].*got list"),
        (jnp.zeros((2, 1), jnp.int32), r"kv_lengths must be .*shape \(2, 1\)"),
    ],
)
def test_rejects_malformed_kv_lengths(kv_lengths, message):
    q, k, v = random_qkv((2, 1, 16, 2, 2, 8))
    with pytest.raises(ValueError, match=message):
        attention.dot_product_attention(q, k, v, kv_lengths=kv_lengths)


def test_dense_declares_decode():
    assert attention.get("dense").capabilities.decode


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="cuDNN needs a GPU")
def test_cudnn_decode_forward_matches_the_brute_force():
    """One query over a 256-entry cache (cuDNN's padding mask); a zero length outputs 0."""
    q, k, v = random_qkv((3, 1, 256, 8, 2, 64), jnp.bfloat16)
    kv_lengths = jnp.asarray([0, 100, 256], jnp.int32)
    out = jax.jit(lambda q, k, v: attention.dot_product_attention(
        q, k, v, kv_lengths=kv_lengths, implementation="cudnn"))(q, k, v)
    expected = brute_force(*(x.astype(jnp.float32) for x in (q, k, v)), kv_lengths)
    assert relative_error(out, expected) < 1e-2
    np.testing.assert_array_equal(out[0], 0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="cuDNN needs a GPU")
def test_cudnn_causal_kv_lengths_forward_and_vjp():
    """Even Nq, Nk: jax's cuDNN backward rejects odd sequence lengths."""
    check_against_brute_force((2, 128, 128, 4, 2, 64), [128, 77], implementation="cudnn",
                              dtype=jnp.bfloat16, causal=True, forward_bound=1e-2,
                              grad_bound=2e-2)

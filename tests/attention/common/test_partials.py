"""merge_partials: exact merging of attention over disjoint key sets, rows that saw nothing,
shape errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from tests.attention.op_test_base import random_qkv, relative_error


def test_merge_partials_equals_full_attention_forward_and_backward():
    """Attention over two key halves, merged, equals attention over all keys — gradients
    included, which exercises the lse cotangent of the custom VJP."""
    q, k, v = random_qkv((2, 37, 50, 4, 2, 16))
    cotangent = jax.random.normal(jax.random.key(5), q.shape)

    def merged(q, k, v):
        halves = [attention.dot_product_attention(q, k[:, s], v[:, s], return_residuals=True)
                  for s in (slice(0, 21), slice(21, None))]
        return attention.merge_partials(*halves)

    def full(q, k, v):
        return attention.dot_product_attention(q, k, v, return_residuals=True)

    (out, lse), vjp = jax.vjp(merged, q, k, v)
    (expected, expected_lse), expected_vjp = jax.vjp(full, q, k, v)
    assert relative_error(out, expected) < 1e-5
    assert relative_error(lse, expected_lse) < 1e-6
    lse_cotangent = jax.random.normal(jax.random.key(6), lse.shape)
    for grad, expected_grad in zip(vjp((cotangent, lse_cotangent)),
                                   expected_vjp((cotangent, lse_cotangent)), strict=True):
        assert relative_error(grad, expected_grad) < 1e-5


def test_merge_partials_with_a_partial_that_saw_nothing():
    q, k, v = random_qkv((1, 8, 8, 2, 2, 8))
    q_ids = jnp.zeros((1, 8), jnp.int32)
    full = attention.dot_product_attention(q, k, v, return_residuals=True)
    empty = attention.dot_product_attention(
        q, k, v, segment_ids=(q_ids, q_ids + 1), return_residuals=True)
    out, lse = attention.merge_partials(full, empty)
    np.testing.assert_array_equal(out, full[0])
    np.testing.assert_array_equal(lse, full[1])


def test_merge_partials_rejects_mismatched_shapes():
    out = jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match=r"lse \(1, 8, 2\); expected"):
        attention.merge_partials((out, jnp.zeros((1, 8, 2))))



def test_merge_partials_of_rows_that_no_partial_saw():
    """Rows that see no key in either partial merge to output 0 and lse -inf with zero, finite
    gradients; the other rows equal attention over the union of the key sets."""
    q, k, v = random_qkv((1, 10, 12, 2, 2, 8))
    q_ids = jnp.asarray([[0, 1, 9, 0, 1, 9, 9, 0, 1, 0]], jnp.int32)  # 9: no key anywhere
    kv_ids = jnp.asarray([[0, 1] * 6], jnp.int32)
    halves = (slice(0, 5), slice(5, None))
    cotangent = jax.random.normal(jax.random.key(8), q.shape)

    def merged(q, k, v):
        return attention.merge_partials(*[
            attention.dot_product_attention(q, k[:, s], v[:, s], return_residuals=True,
                                            segment_ids=(q_ids, kv_ids[:, s]))
            for s in halves])

    def full(q, k, v):
        return attention.dot_product_attention(q, k, v, segment_ids=(q_ids, kv_ids),
                                               return_residuals=True)

    (out, lse), vjp = jax.vjp(merged, q, k, v)
    (expected, expected_lse), expected_vjp = jax.vjp(full, q, k, v)
    dead = np.asarray(q_ids[0] == 9)
    np.testing.assert_array_equal(out[:, dead], 0.0)
    assert np.all(np.isneginf(lse[:, :, dead])) and np.all(np.isfinite(lse[:, :, ~dead]))
    assert relative_error(out, expected) < 1e-5
    np.testing.assert_allclose(lse[:, :, ~dead], expected_lse[:, :, ~dead], rtol=1e-6)
    lse_cotangent = jnp.where(jnp.isfinite(lse), 1.0, 0.0)
    grads = vjp((cotangent, lse_cotangent))
    for grad, expected_grad in zip(grads, expected_vjp((cotangent, lse_cotangent)),
                                   strict=True):
        assert np.all(np.isfinite(grad))
        assert relative_error(grad, expected_grad) < 1e-5
    np.testing.assert_array_equal(grads[0][:, dead], 0.0)

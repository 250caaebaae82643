"""Strict causality, checked the same way for every causal op."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tests.attention.op_test_base import random_qkv


def assert_strictly_causal(attend, shape, t: int) -> None:
    """Changing every token after position t (q, k and v) changes neither the outputs at
    positions <= t nor the gradients there of a loss that reads only those outputs, while
    the later outputs do change. `attend(q, k, v)` runs the op on `random_qkv(shape)`."""
    q, k, v = random_qkv(shape)
    weights = jax.random.normal(jax.random.key(1), (shape[0], t + 1, shape[3], shape[5]))

    def loss(q, k, v):
        return jnp.sum(attend(q, k, v)[:, :t + 1] * weights)

    def later_changed(x, seed):
        noise = jax.random.normal(jax.random.key(seed), x.shape)
        return x.at[:, t + 1:].add(3.0 * noise[:, t + 1:])

    changed = (later_changed(q, 2), later_changed(k, 3), later_changed(v, 4))
    out, changed_out = attend(q, k, v), attend(*changed)
    np.testing.assert_array_equal(out[:, :t + 1], changed_out[:, :t + 1])
    assert not np.allclose(out[:, t + 1:], changed_out[:, t + 1:])
    grads = jax.grad(loss, (0, 1, 2))(q, k, v)
    changed_grads = jax.grad(loss, (0, 1, 2))(*changed)
    for grad, changed_grad in zip(grads, changed_grads, strict=True):
        np.testing.assert_allclose(grad[:, :t + 1], changed_grad[:, :t + 1], atol=1e-6)

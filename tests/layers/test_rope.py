"""2-D RoPE: rotations preserve norms and make q·k depend only on the position offset."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lla.layers.rope import apply_rope, rope_2d


def test_scores_depend_only_on_relative_position():
    head_dim = 16
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, head_dim))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, head_dim))

    def score(q_pos, k_pos):
        cos, sin = rope_2d(np.array([q_pos, k_pos], np.float64), head_dim)
        rq = apply_rope(q, cos[:1], sin[:1])
        rk = apply_rope(k, cos[1:], sin[1:])
        return float((rq * rk).sum())

    assert score((3, 5), (1, 2)) == pytest.approx(score((10, 9), (8, 6)), rel=1e-5)
    assert score((3, 5), (1, 2)) != pytest.approx(score((3, 5), (2, 1)), rel=1e-3)


def test_rotation_preserves_norm_and_identity_at_origin():
    x = jax.random.normal(jax.random.key(2), (2, 5, 3, 8))
    positions = np.stack(np.meshgrid(np.arange(5), np.arange(1), indexing="ij"), -1)
    cos, sin = rope_2d(positions.reshape(-1, 2).astype(np.float64), 8)
    rotated = apply_rope(x, cos, sin)
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1),
                               rtol=1e-5)
    np.testing.assert_allclose(rotated[:, 0], x[:, 0], rtol=1e-6)  # position (0, 0)


def test_rejects_head_dim_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_2d(np.zeros((2, 2)), 6)

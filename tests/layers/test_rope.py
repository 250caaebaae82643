"""RoPE: rotations preserve norms and make q·k depend only on the position offset; 1-D angles
written out per pair; per-row positions [B, N, D/2]."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lla.layers.rope import apply_rope, rope_1d, rope_2d


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


def test_each_half_of_a_head_rotates_with_its_own_axis():
    """Written out per pair: pair i of the first D/4 pairs turns by y·θ^(-i/(D/4)), pair
    D/4 + i by x·θ^(-i/(D/4)) (interleaved (even, odd) pairs). A bug that rotated both halves
    by the same axis would keep relative-position invariance but fail here."""
    head_dim, theta = 16, 10000.0
    quarter = head_dim // 4
    positions = np.array([(0, 0), (3, 0), (0, 5), (2, 7)], np.float64)  # (y, x)
    x = np.asarray(jax.random.normal(jax.random.key(3), (1, 4, 2, head_dim)), np.float64)
    cos, sin = rope_2d(positions, head_dim, theta)
    got = np.asarray(apply_rope(jax.numpy.asarray(x, np.float32), cos, sin))
    frequency = theta ** (-np.arange(quarter) / quarter)
    expected = np.empty_like(x)
    for token, (y, x_pos) in enumerate(positions):
        angles = np.concatenate([y * frequency, x_pos * frequency])  # [D / 2] pairs
        even, odd = x[0, token, :, 0::2], x[0, token, :, 1::2]
        expected[0, token, :, 0::2] = even * np.cos(angles) - odd * np.sin(angles)
        expected[0, token, :, 1::2] = even * np.sin(angles) + odd * np.cos(angles)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Moving along x only leaves the first half of every head untouched, and vice versa.
    np.testing.assert_allclose(got[0, 2, :, :head_dim // 2], x[0, 2, :, :head_dim // 2],
                               rtol=1e-6)
    np.testing.assert_allclose(got[0, 1, :, head_dim // 2:], x[0, 1, :, head_dim // 2:],
                               rtol=1e-6)


def test_1d_pairs_turn_by_position_times_their_frequency():
    """Pair i turns by p·θ^(-i/(D/2)); an off-by-one exponent (i+1, or D instead of D/2)
    fails here."""
    head_dim, theta = 8, 500.0
    positions = np.array([0, 1, 6, 11])
    x = np.asarray(jax.random.normal(jax.random.key(4), (1, 4, 2, head_dim)), np.float64)
    cos, sin = rope_1d(positions, head_dim, theta)
    assert cos.shape == (4, head_dim // 2)
    got = np.asarray(apply_rope(jax.numpy.asarray(x, np.float32), cos, sin))
    angles = positions[:, None] * theta ** (-np.arange(head_dim // 2) / (head_dim // 2))
    even, odd = x[0, :, :, 0::2], x[0, :, :, 1::2]
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    np.testing.assert_allclose(got[0, :, :, 0::2], even * c - odd * s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0, :, :, 1::2], even * s + odd * c, rtol=1e-5, atol=1e-5)


def test_per_row_positions_rotate_each_row_by_its_own():
    """cos/sin [B, N, D/2] (packed sequences): row b is rotated exactly as a [N, D/2] call
    with row b's positions."""
    x = jax.random.normal(jax.random.key(5), (2, 5, 3, 8))
    positions = np.array([[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]])
    rotated = apply_rope(x, *rope_1d(positions, 8))
    for row in range(2):
        expected = apply_rope(x[row:row + 1], *rope_1d(positions[row], 8))
        np.testing.assert_array_equal(rotated[row:row + 1], expected)


def test_rejects_odd_head_dim_and_mismatched_angles():
    with pytest.raises(ValueError, match="even head_dim"):
        rope_1d(np.arange(4), 7)
    x = jax.numpy.zeros((2, 5, 3, 8))
    with pytest.raises(ValueError, match=r"\[N, D/2\] = \(5, 4\) or \[B, N, D/2\]"):
        apply_rope(x, *rope_1d(np.arange(4), 8))

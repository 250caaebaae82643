"""Token orders: Z-order against a brute-force Morton oracle, the pooling property LLSA relies
on (aligned squares/cubes are contiguous runs), inverses, `permute_tokens`, input checks,
`for_op`: what each token-order capability asks of a model, and `frame_causal_arguments`:
causality over a grid's first axis by capability."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla.attention.common.token_order import (
    for_op,
    frame_causal_arguments,
    frame_causal_ops,
    inverse,
    permute_tokens,
    zorder_2d,
    zorder_3d,
)


def morton_code(*coords: int) -> int:
    """Interleave the bits of coords (slowest axis first); the last coordinate gets bit 0."""
    code, position = 0, 0
    for bit in range(32):
        for c in reversed(coords):
            code += ((c >> bit) & 1) << position
            position += 1
    return code


def oracle_2d(height: int, width: int) -> list[int]:
    cells = [(y, x) for y in range(height) for x in range(width)]
    cells.sort(key=lambda cell: morton_code(*cell))
    return [y * width + x for y, x in cells]


def oracle_3d(frames: int, height: int, width: int) -> list[int]:
    cells = [(t, y, x) for t in range(frames) for y in range(height) for x in range(width)]
    cells.sort(key=lambda cell: morton_code(*cell))
    return [(t * height + y) * width + x for t, y, x in cells]


SIZES_2D = [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (32, 64), (3, 5), (6, 10), (7, 7), (1, 7),
            (9, 2)]
SIZES_3D = [(1, 1, 1), (2, 4, 4), (4, 8, 8), (3, 5, 6), (5, 1, 3)]


def test_morton_code_oracle_itself():
    # s = x0 + 2·y0 + 4·x1 + 8·y1; (y, x) = (2, 1) -> 1 + 8 = 9.
    assert morton_code(2, 1) == 9
    # s = x0 + 2·y0 + 4·t0 + 8·x1 + ...; (t, y, x) = (1, 0, 2) -> 4 + 8 = 12.
    assert morton_code(1, 0, 2) == 12


@pytest.mark.parametrize(("height", "width"), SIZES_2D)
def test_zorder_2d_matches_oracle(height, width):
    perm = zorder_2d(height, width)
    assert perm.dtype == np.int32
    assert perm.shape == (height * width,)
    np.testing.assert_array_equal(perm, oracle_2d(height, width))


@pytest.mark.parametrize(("frames", "height", "width"), SIZES_3D)
def test_zorder_3d_matches_oracle(frames, height, width):
    perm = zorder_3d(frames, height, width)
    assert perm.dtype == np.int32
    assert perm.shape == (frames * height * width,)
    np.testing.assert_array_equal(perm, oracle_3d(frames, height, width))


def test_zorder_small_cases_written_out():
    np.testing.assert_array_equal(zorder_2d(2, 2), [0, 1, 2, 3])
    np.testing.assert_array_equal(
        zorder_2d(4, 4), [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    )
    # 2 x 3 lives in a 4 x 4 square: quad (0,0),(0,1),(1,0),(1,1), then column 2 of rows 0, 1.
    np.testing.assert_array_equal(zorder_2d(2, 3), [0, 1, 3, 4, 2, 5])
    # 2 x 2 x 4: the x-halves of the 2-cube come first, then the 2-cube at x = 2..3.
    np.testing.assert_array_equal(
        zorder_3d(2, 2, 4), [0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15]
    )


@pytest.mark.parametrize(
    "perm",
    [zorder_2d(*size) for size in SIZES_2D] + [zorder_3d(*size) for size in SIZES_3D],
)
def test_zorder_is_a_permutation_and_inverse_round_trips(perm):
    n = perm.size
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    inv = inverse(perm)
    assert inv.dtype == np.int32
    np.testing.assert_array_equal(inv[perm], np.arange(n))
    np.testing.assert_array_equal(perm[inv], np.arange(n))
    x = np.random.default_rng(0).normal(size=(2, n))
    np.testing.assert_array_equal(x[..., perm][..., inv], x)


def test_inverse_of_random_permutations():
    rng = np.random.default_rng(1)
    for n in (1, 2, 17, 100):
        perm = rng.permutation(n)
        expected = np.argsort(perm)
        np.testing.assert_array_equal(inverse(perm), expected)
        np.testing.assert_array_equal(inverse(list(perm)), expected)


@pytest.mark.parametrize(("height", "width", "side"), [(16, 16, 2), (16, 16, 4), (16, 16, 8),
                                                       (32, 64, 4), (32, 64, 32), (8, 4, 4)])
def test_pooling_consecutive_zorder_tokens_pools_aligned_squares(height, width, side):
    """Mean of each run of side² Z-order tokens == the Z-ordered side x side patch means."""
    image = np.random.default_rng(2).normal(size=(height, width, 3))
    tokens_z = permute_tokens(image.reshape(1, height * width, 3), zorder_2d(height, width))
    pooled = np.asarray(tokens_z).reshape(-1, side * side, 3).mean(axis=1)

    patches = image.reshape(height // side, side, width // side, side, 3).mean(axis=(1, 3))
    patches_z = patches.reshape(-1, 3)[zorder_2d(height // side, width // side)]
    np.testing.assert_allclose(pooled, patches_z, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("frames", "height", "width", "side"),
                         [(4, 8, 8, 2), (4, 8, 8, 4), (8, 8, 8, 8), (2, 4, 8, 2)])
def test_pooling_consecutive_zorder_tokens_pools_aligned_cubes(frames, height, width, side):
    video = np.random.default_rng(3).normal(size=(frames, height, width, 2))
    n = frames * height * width
    tokens_z = permute_tokens(video.reshape(1, n, 2), zorder_3d(frames, height, width))
    pooled = np.asarray(tokens_z).reshape(-1, side**3, 2).mean(axis=1)

    coarse = (frames // side, height // side, width // side)
    cubes = video.reshape(coarse[0], side, coarse[1], side, coarse[2], side, 2)
    cubes = cubes.mean(axis=(1, 3, 5)).reshape(-1, 2)[zorder_3d(*coarse)]
    np.testing.assert_allclose(pooled, cubes, rtol=1e-6, atol=1e-6)


def test_aligned_squares_are_contiguous_runs():
    height, width, side = 16, 32, 4
    perm = zorder_2d(height, width)
    for run in perm.reshape(-1, side * side):
        ys, xs = run // width, run % width
        assert ys.min() % side == 0 and xs.min() % side == 0
        assert ys.max() - ys.min() == side - 1 and xs.max() - xs.min() == side - 1


def test_permute_tokens_round_trip_on_jax_array():
    height, width = 6, 10
    perm = zorder_2d(height, width)
    x = jax.random.normal(jax.random.key(0), (2, height * width, 4, 3))
    x_z = permute_tokens(x, perm)
    assert isinstance(x_z, jax.Array)
    np.testing.assert_array_equal(x_z, np.asarray(x)[:, perm])
    np.testing.assert_array_equal(permute_tokens(x_z, inverse(perm)), x)

    jitted = jax.jit(lambda a: permute_tokens(permute_tokens(a, perm), inverse(perm)))
    np.testing.assert_array_equal(jitted(x), x)


def test_permute_tokens_on_numpy_and_integer_arrays():
    perm = zorder_3d(2, 2, 2)[::-1].copy()
    x = np.arange(2 * 8).reshape(2, 8)
    np.testing.assert_array_equal(permute_tokens(x, perm), x[:, perm])
    np.testing.assert_array_equal(permute_tokens(jnp.asarray(x), perm), x[:, perm])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: zorder_2d(0, 4), "height"),
        (lambda: zorder_2d(4, -2), "width"),
        (lambda: zorder_2d(4.0, 4), "height"),
        (lambda: zorder_2d(True, 4), "height"),
        (lambda: zorder_3d(2, 0, 4), "height"),
        (lambda: zorder_3d(-1, 2, 4), "frames"),
        (lambda: zorder_3d(2, 2, "4"), "width"),
    ],
)
def test_zorder_rejects_bad_sizes(call, message):
    with pytest.raises(ValueError, match=f"{message} to be a positive int"):
        call()


@pytest.mark.parametrize(
    "perm",
    [
        np.array([0, 0, 2]),
        np.array([0, 1, 3]),
        np.array([-1, 0, 1]),
        np.array([1.0, 0.0]),
        np.array([[0, 1], [1, 0]]),
    ],
)
def test_inverse_rejects_non_permutations(perm):
    with pytest.raises(ValueError, match="inverse needs"):
        inverse(perm)


@pytest.mark.parametrize(
    ("x", "perm"),
    [
        (np.zeros((2, 5, 3)), zorder_2d(2, 2)),
        (np.zeros((4,)), zorder_2d(2, 2)),
        (np.zeros((2, 4)), zorder_2d(2, 2).reshape(2, 2)),
    ],
)
def test_permute_tokens_rejects_mismatched_shapes(x, perm):
    with pytest.raises(ValueError, match=r"permute_tokens needs .* got x \("):
        permute_tokens(x, perm)


def test_for_op_any_order_is_the_natural_order():
    order = for_op("dense", (3, 5))
    assert order.permutation is None and order.op_kwargs == {}
    x = jnp.arange(2 * 15 * 4).reshape(2, 15, 4)
    assert order.to_op(x) is x and order.from_op(x) is x
    np.testing.assert_array_equal(order.positions, [(y, x) for y in range(3) for x in range(5)])


def test_for_op_grid_order_passes_the_grid():
    order = for_op("neighborhood", (4, 2, 3))
    assert order.permutation is None and order.op_kwargs == {"spatial_shape": (4, 2, 3)}
    assert order.op_arguments({"kernel_size": 3}) == {"kernel_size": 3,
                                                      "spatial_shape": (4, 2, 3)}
    assert order.op_arguments({"spatial_shape": [4, 2, 3]})["spatial_shape"] == (4, 2, 3)
    with pytest.raises(ValueError, match=r"spatial_shape=\(24,\) contradicts the token grid"):
        order.op_arguments({"spatial_shape": (24,)})


@pytest.mark.parametrize("grid", [(6, 10), (4, 8, 8)])
def test_for_op_hierarchy_order_is_zorder_with_positions_that_move_with_the_tokens(grid):
    order = for_op("llsa", grid)
    expected = zorder_2d(*grid) if len(grid) == 2 else zorder_3d(*grid)
    np.testing.assert_array_equal(order.permutation, expected)
    np.testing.assert_array_equal(order.inverse, inverse(expected))
    assert order.op_kwargs == {}
    # Position i holds raster token permutation[i], whose coordinates are `positions[i]`.
    raster_coords = np.stack(np.unravel_index(np.arange(np.prod(grid)), grid), -1)
    np.testing.assert_array_equal(order.positions, raster_coords[expected])
    x = jax.random.normal(jax.random.key(0), (2, int(np.prod(grid)), 3))
    np.testing.assert_array_equal(order.to_op(x), x[:, expected])
    np.testing.assert_array_equal(order.from_op(order.to_op(x)), x)


def test_for_op_hierarchy_order_of_a_sequence_is_the_natural_order():
    order = for_op(attention.get("llsa"), (64,))
    assert order.permutation is None and order.op_kwargs == {}


def test_for_op_rejects_grids_the_op_does_not_take_and_bad_grids():
    op = attention.AttentionOp(
        name="images_only", fn=attention.dot_product_attention,
        implementations=attention.get("dense").implementations.values(), summary="x",
        capabilities=attention.Capabilities(spatial_dims=(2,)))
    assert for_op(op, (4, 4)).permutation is None
    with pytest.raises(ValueError, match=r"'images_only' takes 2-D token grids, not the 3-D "):
        for_op(op, (2, 4, 4))
    for grid in ((), (1, 2, 3, 4), (4, 0), (4.0, 4), (True, 4)):
        with pytest.raises(ValueError, match="expected 1 to 3 positive ints"):
            for_op("dense", grid)


def test_frame_causal_arguments_by_token_order():
    assert frame_causal_arguments("dense", (4, 3, 5)) == {"causal": True,
                                                          "causal_block_size": 15}
    assert frame_causal_arguments("dense", (7,)) == {"causal": True, "causal_block_size": 1}
    assert frame_causal_arguments("neighborhood", (4, 3, 5)) == {"causal": (True, False, False)}
    assert frame_causal_arguments("neighborhood", (6, 2)) == {"causal": (True, False)}


def test_frame_causal_ops_are_those_whose_capabilities_allow_it():
    def can(caps):
        return caps.causal and (caps.token_order == "grid" or (
            caps.token_order == "any" and caps.block_causal))

    for rank in (1, 2, 3):
        expected = tuple(name for name in attention.names()
                         if rank in attention.get(name).capabilities.spatial_dims
                         and can(attention.get(name).capabilities))
        assert frame_causal_ops(rank) == expected
    assert {"dense", "neighborhood"} <= set(frame_causal_ops(3))
    assert "llsa" not in frame_causal_ops(3)


def test_frame_causal_arguments_say_why_not_and_name_the_ops_that_can():
    token_causal = attention.AttentionOp(
        name="token_causal", fn=attention.dot_product_attention,
        implementations=attention.get("dense").implementations.values(), summary="x",
        capabilities=attention.Capabilities(causal=True))
    not_causal = dataclasses.replace(token_causal, name="not_causal",
                                     capabilities=attention.Capabilities())
    cases = [(not_causal, "it is not causal"),
             (token_causal, r"it is token causal only \(no causal_block_size"),
             (dataclasses.replace(token_causal, capabilities=attention.Capabilities(
                 causal=True, token_order="hierarchy")), "its tokens come in hierarchy")]
    for op, why in cases:
        with pytest.raises(ValueError, match=rf"cannot be causal over the first axis of the "
                                             rf"token grid \(2, 4, 4\): {why}.*; ops that "
                                             rf"can: .*dense.*neighborhood"):
            frame_causal_arguments(op, (2, 4, 4))
    with pytest.raises(ValueError, match="expected 1 to 3 positive ints"):
        frame_causal_arguments("dense", (2, 0, 4))


def test_frame_causal_dense_equals_a_neighborhood_as_large_as_the_grid():
    """A neighbourhood window covering the whole grid, causal over frames, sees exactly the
    tokens of the current and earlier frames: dense block-causal attention."""
    grid = (3, 4, 5)
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (2, 60, 2, 8)) for key in keys)
    with jax.default_matmul_precision("highest"):
        dense = attention.dot_product_attention(
            q, k, v, **frame_causal_arguments("dense", grid))
        windowed = attention.neighborhood(
            q, k, v, kernel_size=grid, implementation="xla",
            **for_op("neighborhood", grid).op_arguments(
                frame_causal_arguments("neighborhood", grid)))
        first_frame = attention.dot_product_attention(q[:, :20], k[:, :20], v[:, :20])
    np.testing.assert_allclose(windowed, dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dense[:, :20], first_frame, rtol=1e-5, atol=1e-6)  # itself only

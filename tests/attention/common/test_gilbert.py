"""The generalized Hilbert ("Gilbert") token order: `gilbert_2d` / `gilbert_3d` are
permutations of every grid size, step only to neighbouring cells (face neighbours whenever
parity allows), start and end where the docstrings say, are Hilbert curves on power-of-two
cubes, cut into compact blocks, are safe to mutate; and the "gilbert" capability: `for_op`,
the registry and frame causality."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import numpy as np
import pytest

import lla.attention as attention
from lla.attention import registry
from lla.attention.common.token_order import (
    for_op,
    frame_causal_arguments,
    frame_causal_ops,
    gilbert_2d,
    gilbert_3d,
    inverse,
    zorder_3d,
)

SIZES_3D = [(1, 1, 1), (1, 5, 7), (3, 3, 3), (2, 8, 8), (5, 6, 7), (8, 8, 8), (4, 16, 16),
            (7, 1, 9), (2, 3, 4), (13, 1, 1), (1, 1, 13), (1, 13, 1), (6, 10, 4), (11, 7, 5),
            (9, 9, 9), (3, 2, 17), (21, 30, 52)]
SIZES_2D = [(1, 1), (1, 9), (9, 1), (2, 3), (3, 2), (5, 5), (7, 4), (4, 7), (8, 8), (16, 16),
            (13, 17), (6, 10), (11, 2), (30, 52), (31, 52)]


def coords(perm: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """[N, rank] grid coordinates (slowest axis first) of the cells in curve order."""
    return np.stack(np.unravel_index(perm, shape), axis=-1)


def steps(perm: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """[N - 1, rank] |coordinate change| of each step along the curve."""
    return np.abs(np.diff(coords(perm, shape), axis=0))


def major_axis(shape: tuple[int, ...]) -> int:
    """The axis the curve leaves along: the longest, ties to the fastest axis."""
    return max(reversed(range(len(shape))), key=lambda axis: shape[axis])


@pytest.mark.parametrize("shape", SIZES_3D + [(1, *size) for size in SIZES_2D])
def test_gilbert_3d_is_an_int32_permutation(shape):
    perm = gilbert_3d(*shape)
    assert perm.dtype == np.int32 and perm.shape == (np.prod(shape),)
    np.testing.assert_array_equal(np.sort(perm), np.arange(np.prod(shape)))


@pytest.mark.parametrize("shape", SIZES_2D)
def test_gilbert_2d_is_the_3d_curve_of_one_frame_and_an_int32_permutation(shape):
    perm = gilbert_2d(*shape)
    assert perm.dtype == np.int32
    np.testing.assert_array_equal(np.sort(perm), np.arange(np.prod(shape)))
    np.testing.assert_array_equal(perm, gilbert_3d(1, *shape))


@pytest.mark.parametrize("shape", SIZES_3D + [(1, *size) for size in SIZES_2D])
def test_starts_at_the_origin_and_ends_at_the_far_end_of_the_longest_axis(shape):
    cells = coords(gilbert_3d(*shape), shape)
    end = np.zeros(3, int)
    end[major_axis(shape)] = max(shape) - 1
    np.testing.assert_array_equal(cells[0], (0, 0, 0))
    np.testing.assert_array_equal(cells[-1], end)


@pytest.mark.parametrize("shape", SIZES_3D)
def test_3d_steps_go_to_neighbours_only_and_to_face_neighbours_when_all_sides_are_even(shape):
    """Every step changes each coordinate by at most 1 and at least one coordinate, never
    all three (no body diagonal): the curve is connected. With all sides even every step is
    a face step (L1 = 1). Odd sides may force edge-diagonal steps (L1 = 2): their count D
    has the parity of N - L (L the longest side), since face steps flip the checkerboard
    colour and diagonal ones keep it, and the curve ends at colour L - 1. D is at most 8%
    of the steps for grids of >= 27 cells (worst over all sizes up to 20 per axis: 7.7%, at
    3 x 3 x 3)."""
    delta = steps(gilbert_3d(*shape), shape)
    cells = int(np.prod(shape))
    l1 = delta.sum(axis=1)
    assert delta.max(initial=1) == 1 and l1.min(initial=1) >= 1
    assert l1.max(initial=1) <= 2
    diagonal = int((l1 == 2).sum())
    assert diagonal % 2 == (cells - max(shape)) % 2
    if all(side % 2 == 0 for side in shape):
        assert diagonal == 0
    if cells >= 27:
        assert diagonal <= 0.08 * (cells - 1)


def test_all_even_boxes_have_face_steps_only_and_odd_ones_can_need_diagonals():
    """Exhaustive over small even boxes; and 2 x 2 x 3 (N = 12 even, longest side 3 odd)
    needs an odd number of diagonal steps, so at least one."""
    for shape in itertools.product((2, 4, 6), repeat=3):
        np.testing.assert_array_equal(steps(gilbert_3d(*shape), shape).sum(axis=1), 1)
    assert (steps(gilbert_3d(2, 2, 3), (2, 2, 3)).sum(axis=1) == 2).sum() % 2 == 1


@pytest.mark.parametrize("shape", SIZES_2D)
def test_2d_has_one_diagonal_step_exactly_when_the_longer_side_is_odd_and_the_shorter_even(
        shape):
    l1 = steps(gilbert_2d(*shape), shape).sum(axis=1)
    assert l1.min(initial=1) >= 1 and l1.max(initial=1) <= 2
    longer, shorter = max(shape), min(shape)
    assert (l1 == 2).sum() == int(longer % 2 == 1 and shorter % 2 == 0)


@pytest.mark.parametrize("shape", [(7, 1, 9), (7, 9, 1), (1, 7, 9), (5, 1, 1), (4, 1, 6),
                                   (1, 6, 4), (6, 4, 1)])
def test_a_singleton_axis_anywhere_gives_the_2d_curve_of_the_other_two(shape):
    rest = [axis for axis in range(3) if shape[axis] != 1] or [2]
    if len(rest) == 1:
        np.testing.assert_array_equal(gilbert_3d(*shape), np.arange(np.prod(shape)))
        return
    plane = (shape[rest[0]], shape[rest[1]])
    np.testing.assert_array_equal(coords(gilbert_3d(*shape), shape)[:, rest],
                                  coords(gilbert_2d(*plane), plane))


def test_small_curves_written_out():
    # 4 x 4: the Hilbert curve from (0, 0) along x, ending at (0, 3).
    np.testing.assert_array_equal(gilbert_2d(4, 4),
                                  [0, 1, 5, 4, 8, 12, 13, 9, 10, 14, 15, 11, 7, 6, 2, 3])
    # 2 x 3: (0,0) (0,1), diagonal to (1,0), (1,1) (1,2), up to (0,2).
    np.testing.assert_array_equal(gilbert_2d(2, 3), [0, 1, 3, 4, 5, 2])
    # 2 x 2 x 2, (t, y, x): (000) (010) (110) (100) (101) (111) (011) (001).
    np.testing.assert_array_equal(gilbert_3d(2, 2, 2), [0, 2, 6, 4, 5, 7, 3, 1])
    # 3 x 4 x 4 pinned: the order is part of what a trained model's weights mean, so the
    # cutting rules (here: a 4 x 4 x 3 box is cut in five, not three) must not drift.
    np.testing.assert_array_equal(gilbert_3d(3, 4, 4), [
        0, 16, 17, 1, 5, 21, 20, 4, 8, 24, 9, 25, 29, 13, 12, 28,
        44, 45, 41, 40, 36, 32, 33, 37, 38, 34, 35, 39, 43, 27, 42, 26,
        30, 46, 47, 31, 15, 14, 10, 11, 7, 23, 22, 6, 2, 18, 19, 3])


@pytest.mark.parametrize("side", [4, 8])
def test_power_of_two_cubes_are_hilbert_curves(side):
    """Every aligned run of 8^i positions is one aligned 2^i cube, for every i."""
    cells = coords(gilbert_3d(side, side, side), (side,) * 3)
    for level in range(1, side.bit_length()):
        cube = 2 ** level
        runs = cells.reshape(-1, cube ** 3, 3)
        low, high = runs.min(axis=1), runs.max(axis=1)
        np.testing.assert_array_equal(low % cube, 0)
        np.testing.assert_array_equal(high - low, cube - 1)  # 8^i distinct cells: a full cube


@pytest.mark.parametrize("side", [8, 16])
def test_power_of_two_squares_are_hilbert_curves(side):
    cells = coords(gilbert_2d(side, side), (side, side))
    for level in range(1, side.bit_length()):
        square = 2 ** level
        runs = cells.reshape(-1, square ** 2, 2)
        low, high = runs.min(axis=1), runs.max(axis=1)
        np.testing.assert_array_equal(low % square, 0)
        np.testing.assert_array_equal(high - low, square - 1)


def block_boxes(perm: np.ndarray, shape: tuple[int, ...], block: int = 128) -> np.ndarray:
    """[blocks, 3] bounding-box extents of the full blocks of `block` consecutive cells."""
    full = perm.size // block * block
    cells = coords(perm[:full], shape).reshape(-1, block, 3)
    return cells.max(axis=1) - cells.min(axis=1) + 1


def test_blocks_of_128_are_solid_compact_boxes_on_a_power_of_two_video():
    """16 x 32 x 32: every block of 128 consecutive cells fills a 4 x 4 x 8 box (bounding box
    volume 128, longest side 8). Raster blocks also fill their boxes, but as 1 x 4 x 32
    slabs: longest side 32, and 328 exposed cell faces against 160."""
    shape = (16, 32, 32)
    gilbert = np.sort(block_boxes(gilbert_3d(*shape), shape), axis=1)
    raster = np.sort(block_boxes(np.arange(np.prod(shape)), shape), axis=1)
    np.testing.assert_array_equal(gilbert, np.broadcast_to((4, 4, 8), gilbert.shape))
    np.testing.assert_array_equal(raster, np.broadcast_to((1, 4, 32), raster.shape))


def test_blocks_of_128_are_compact_on_a_latent_video_grid():
    """21 x 30 x 52 (a video latent grid, no power of two): mean bounding box of a block of
    128 along the curve 216 cells (largest 448), in Z-order 332 (7,560), in raster order 395
    (3,120): asserted as at most 0.6x raster's and 0.7x Z-order's mean, at most 4 x 128
    cells for any block, and every block connected (steps checked above)."""
    shape = (21, 30, 52)
    volumes = {name: block_boxes(perm, shape).prod(axis=1) for name, perm in (
        ("gilbert", gilbert_3d(*shape)), ("zorder", zorder_3d(*shape)),
        ("raster", np.arange(np.prod(shape))))}
    assert volumes["gilbert"].mean() <= 0.6 * volumes["raster"].mean()
    assert volumes["gilbert"].mean() <= 0.7 * volumes["zorder"].mean()
    assert volumes["gilbert"].max() <= 4 * 128 < volumes["raster"].max()


def test_results_are_fresh_arrays_so_callers_cannot_corrupt_the_cache():
    first = gilbert_3d(3, 4, 5)
    expected = first.copy()
    first[:] = 0
    second = gilbert_3d(3, 4, 5)
    np.testing.assert_array_equal(second, expected)
    assert second.flags.writeable and not np.shares_memory(second, gilbert_3d(3, 4, 5))
    gilbert_2d(4, 5)[:] = 0
    np.testing.assert_array_equal(gilbert_2d(4, 5), gilbert_3d(1, 4, 5))
    np.testing.assert_array_equal(np.sort(gilbert_2d(4, 5)), np.arange(20))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: gilbert_2d(0, 4), "gilbert_2d needs height"),
        (lambda: gilbert_2d(4, -1), "gilbert_2d needs width"),
        (lambda: gilbert_2d(4.0, 4), "gilbert_2d needs height"),
        (lambda: gilbert_2d(True, 4), "gilbert_2d needs height"),
        (lambda: gilbert_3d(0, 2, 4), "gilbert_3d needs frames"),
        (lambda: gilbert_3d(2, None, 4), "gilbert_3d needs height"),
        (lambda: gilbert_3d(2, 2, "4"), "gilbert_3d needs width"),
    ],
)
def test_gilbert_rejects_bad_sizes(call, message):
    with pytest.raises(ValueError, match=f"{message} to be a positive int"):
        call()


def test_gilbert_accepts_numpy_ints():
    np.testing.assert_array_equal(gilbert_3d(np.int64(2), 3, np.int32(4)), gilbert_3d(2, 3, 4))


def test_the_asa_ops_declare_the_gilbert_order_and_the_registry_knows_it():
    assert "gilbert" in registry.TOKEN_ORDERS
    assert registry.Capabilities(token_order="gilbert").token_order == "gilbert"
    for name in ("asa", "asa_gt"):
        assert attention.get(name).capabilities.token_order == "gilbert"


@pytest.mark.parametrize("grid", [(5, 6, 7), (4, 16, 16), (6, 10), (9, 1)])
def test_for_op_gilbert_order_is_the_curve_with_an_inverse_that_round_trips(grid):
    order = for_op("asa", grid)
    expected = gilbert_2d(*grid) if len(grid) == 2 else gilbert_3d(*grid)
    np.testing.assert_array_equal(order.permutation, expected)
    np.testing.assert_array_equal(order.inverse, inverse(expected))
    assert order.op_kwargs == {}
    np.testing.assert_array_equal(order.positions, coords(expected, grid))
    x = jax.random.normal(jax.random.key(0), (2, int(np.prod(grid)), 3))
    np.testing.assert_array_equal(order.to_op(x), x[:, expected])
    np.testing.assert_array_equal(order.from_op(order.to_op(x)), x)
    np.testing.assert_array_equal(order.to_op(order.from_op(x)), x)


def test_for_op_gilbert_order_of_a_sequence_and_the_ablation_are_the_natural_order():
    assert for_op("asa_gt", (64,)).permutation is None
    assert for_op("asa", (4, 8, 8), natural_order=True).permutation is None
    assert for_op("asa", (8, 8), natural_order=True).op_kwargs == {}


def test_a_causal_gilbert_op_cannot_be_frame_causal():
    causal_gilbert = dataclasses.replace(
        attention.get("dense"), name="causal_gilbert",
        capabilities=attention.Capabilities(causal=True, block_causal=True,
                                            token_order="gilbert"))
    with pytest.raises(ValueError, match=r"'causal_gilbert' cannot be causal over the first "
                                         r"axis .*: its tokens come in Gilbert-curve order, "
                                         r"whose runs \(its blocks\) mix slices of the grid; "
                                         r"ops that can: .*dense.*neighborhood"):
        frame_causal_arguments(causal_gilbert, (2, 4, 4))
    with pytest.raises(ValueError, match=r"'asa' cannot be causal .*: it is not causal"):
        frame_causal_arguments("asa", (2, 4, 4))
    assert not {"asa", "asa_gt"} & set(frame_causal_ops(3))

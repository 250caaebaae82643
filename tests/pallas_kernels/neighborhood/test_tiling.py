"""The neighbourhood kernels' static metadata (`lla.pallas_kernels.neighborhood.tiling`): the
tiled layout round trip, tile lists against brute-force visible pairs, and the in-kernel mask
against the oracle."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla.pallas_kernels.neighborhood.tiling import make_plan
from tests.attention.neighborhood.oracle import neighborhood_mask

PLANS = [
    dict(spatial_shape=(13, 17), kernel_size=(5, 3), dilation=(1, 2), causal=(False, False),
         q_tile=(4, 4), kv_tile=(2, 4)),
    dict(spatial_shape=(16, 16), kernel_size=(11, 9), dilation=(1, 1), causal=(False, True),
         q_tile=(2, 4), kv_tile=(2, 2)),
    dict(spatial_shape=(6, 9, 10), kernel_size=(3, 3, 5), dilation=(2, 1, 1),
         causal=(False, True, False), q_tile=(2, 2, 4), kv_tile=(1, 4, 2)),
    dict(spatial_shape=(40,), kernel_size=(7,), dilation=(3,), causal=(True,), q_tile=(8,),
         kv_tile=(4,)),
    dict(spatial_shape=(13, 9), kernel_size=(4, 6), dilation=(2, 1), causal=(True, False),
         q_tile=(2, 4), kv_tile=(2, 2)),
]


def _plan(case):
    return make_plan(case["spatial_shape"], case["kernel_size"], case["dilation"],
                     case["causal"], heads=2, kv_heads=1, head_dim=8, q_tile=case["q_tile"],
                     kv_tile=case["kv_tile"])


def _tiled_positions(plan, tile):
    """Row-major token index at each slot of the tiled layout [G, M], -1 in padding."""
    tokens = math.prod(plan.spatial_shape)
    index = jnp.arange(1, tokens + 1, dtype=jnp.float32).reshape(1, tokens, 1, 1)
    return np.asarray(plan.to_tiles(index, tile)[0, :, :, 0, 0]).astype(np.int64) - 1


@pytest.mark.parametrize("case", PLANS)
def test_tiled_layout_round_trip(case):
    plan = _plan(case)
    x = jax.random.normal(jax.random.key(0), (2, math.prod(plan.spatial_shape), 3, 5))
    for tile in (plan.q_tile, plan.kv_tile):
        tiled = plan.to_tiles(x, tile)
        assert tiled.shape == (2, plan.groups, plan.group_tokens(tile), 3, 5)
        np.testing.assert_array_equal(plan.from_tiles(tiled, tile), x)
        positions = _tiled_positions(plan, tile)
        assert sorted(positions[positions >= 0]) == list(range(x.shape[1]))


@pytest.mark.parametrize("case", PLANS)
def test_tile_lists_cover_exactly_the_visible_pairs(case):
    """Brute force over the tiled layout: a kv tile is listed for a query tile iff some
    visible (query, key) pair joins them, "full" iff every pair is visible (padding queries
    count as the last real query of their axis), and `query_lists` is the transpose."""
    plan = _plan(case)
    mask = neighborhood_mask(plan.spatial_shape, plan.kernel_size, plan.dilation, plan.causal)
    q_pos, kv_pos = _tiled_positions(plan, plan.q_tile), _tiled_positions(plan, plan.kv_tile)
    tq, tk = math.prod(plan.q_tile), math.prod(plan.kv_tile)
    forward, backward = plan.kv_lists(), plan.query_lists()
    for group in range(plan.groups):
        queries = q_pos[group].reshape(-1, tq)
        keys = kv_pos[group].reshape(-1, tk)
        # Padding queries of a tile with real ones act as real queries of the same tile.
        for q_tile in range(len(queries)):
            real = queries[q_tile][queries[q_tile] >= 0]
            if not len(real):
                continue  # all padding: reads its axis' last real window, output dropped
            seen = mask[real][:, keys.clip(0)] & (keys >= 0)  # [rows, kv tiles, tk]
            listed = forward.tiles[group, q_tile, :forward.counts[group, q_tile, 1]]
            assert sorted(listed) == list(np.flatnonzero(seen.any((0, 2))))
            full = forward.tiles[group, q_tile, :forward.counts[group, q_tile, 0]]
            assert sorted(full) == list(np.flatnonzero(seen.all((0, 2))))
            for kv_tile in listed:
                back = backward.tiles[group, kv_tile, :backward.counts[group, kv_tile, 1]]
                assert q_tile in back


def test_mask_inside_kernels_matches_the_oracle():
    plan = _plan(PLANS[2])
    visible = jax.jit(plan.visible)
    mask = neighborhood_mask(plan.spatial_shape, plan.kernel_size, plan.dilation, plan.causal)
    q_pos, kv_pos = _tiled_positions(plan, plan.q_tile), _tiled_positions(plan, plan.kv_tile)
    tq, tk = math.prod(plan.q_tile), math.prod(plan.kv_tile)
    for group in range(plan.groups):
        for q_tile in range(q_pos.shape[1] // tq):
            for kv_tile in range(kv_pos.shape[1] // tk):
                queries = q_pos[group, q_tile * tq:(q_tile + 1) * tq]
                keys = kv_pos[group, kv_tile * tk:(kv_tile + 1) * tk]
                got = np.asarray(visible(group, q_tile, kv_tile))
                real = queries >= 0
                expected = mask[queries[real]][:, keys.clip(0)] & (keys >= 0)
                np.testing.assert_array_equal(got[real], expected)

"""Tiled layout and tile lists of one neighbourhood-attention call, shared by GPU and TPU.

Layout. A [B, N, H, D] array in row-major order over `spatial_shape` is rearranged to
[B, G, M, H, D]: G = prod(dilation) dilation groups (group-major), and inside each group the
tokens ordered tile by tile (tiles row-major, tokens row-major inside a tile). Per axis of
n tokens with dilation d and tile t, a group holds m = ceil(n / d) index slots padded to
whole tiles, P = ceil(m / t)·t, so M = prod(P). Padding tokens are zeros and never visible.
Queries and keys use their own tile shapes (`q_tile`, `kv_tile`).

Tile lists (numpy int32, static). A query tile's keys lie in the kv tiles that intersect the
union of its queries' windows (per axis an interval, so a box of kv tiles). For each group
and query tile, `kv_lists()` gives those kv tiles, the ones that every query of the tile
sees completely ("full": no mask needed) first, and `query_lists()` is its transpose (for
each kv tile, the query tiles that read it) for the dK/dV pass. Padding queries act as the
last real query of their axis, so every row has keys and stays finite.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lla.pallas_kernels.neighborhood.windows import group_extent, window

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class TileLists:
    """Per group and tile, the tiles of the other side to visit.

    tiles: int32 [G, T, S]: for tile t, entries [0, counts[g, t, 1]) are the tiles to visit,
      the first counts[g, t, 0] of them fully visible; the rest repeat the last entry.
    counts: int32 [G, T, 2]: (number fully visible, number to visit).
    """

    tiles: np.ndarray
    counts: np.ndarray


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of a call: geometry, windows and tiles (all per spatial axis)."""

    spatial_shape: Shape
    kernel_size: Shape
    dilation: Shape
    causal: tuple[bool, ...]
    q_tile: Shape
    kv_tile: Shape
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def rank(self) -> int:
        return len(self.spatial_shape)

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5

    @property
    def groups(self) -> int:
        return math.prod(self.dilation)

    def group_slots(self, axis: int) -> int:
        """m: index slots of each dilation group along `axis` (the largest group's size)."""
        return -(-self.spatial_shape[axis] // self.dilation[axis])

    def tile_grid(self, tile: Shape) -> Shape:
        """Tiles per group along each axis."""
        return tuple(-(-self.group_slots(a) // tile[a]) for a in range(self.rank))

    def group_tokens(self, tile: Shape) -> int:
        """M: tokens per group in the tiled layout."""
        return math.prod(tile) * math.prod(self.tile_grid(tile))

    def kv_head(self, head):
        """The kv head read by query head `head` (GQA)."""
        return head // (self.heads // self.kv_heads)

    # ---- layout -----------------------------------------------------------------------------

    def to_tiles(self, x: jax.Array, tile: Shape) -> jax.Array:
        """[B, N, h, D] row-major -> [B, G, M, h, D] tiled (zeros in the padding)."""
        batch, _, heads, dim = x.shape
        grid, rank = self.tile_grid(tile), self.rank
        x = x.reshape(batch, *self.spatial_shape, heads, dim)
        x = jnp.pad(x, [(0, 0)] + [(0, grid[a] * tile[a] * self.dilation[a]
                                    - self.spatial_shape[a]) for a in range(rank)]
                    + [(0, 0), (0, 0)])
        # Axis a becomes (tile index, index inside the tile, dilation group).
        x = x.reshape(batch, *itertools.chain.from_iterable(
            (grid[a], tile[a], self.dilation[a]) for a in range(rank)), heads, dim)
        order = [0, *(3 * a + 3 for a in range(rank)), *(3 * a + 1 for a in range(rank)),
                 *(3 * a + 2 for a in range(rank)), 3 * rank + 1, 3 * rank + 2]
        return x.transpose(order).reshape(batch, self.groups, self.group_tokens(tile),
                                          heads, dim)

    def from_tiles(self, x: jax.Array, tile: Shape) -> jax.Array:
        """Inverse of `to_tiles`: [B, G, M, h, D] -> [B, N, h, D]."""
        batch, _, _, heads, dim = x.shape
        grid, rank = self.tile_grid(tile), self.rank
        x = x.reshape(batch, *self.dilation, *grid, *tile, heads, dim)
        per_axis = itertools.chain.from_iterable(
            (rank + 1 + a, 2 * rank + 1 + a, 1 + a) for a in range(rank))
        order = [0, *per_axis, 3 * rank + 1, 3 * rank + 2]
        x = x.transpose(order).reshape(
            batch, *(grid[a] * tile[a] * self.dilation[a] for a in range(rank)), heads, dim)
        x = x[(slice(None), *(slice(0, n) for n in self.spatial_shape))]
        return x.reshape(batch, -1, heads, dim)

    # ---- visibility inside kernels -------------------------------------------------------------

    def visible(self, group, q_tile, kv_tile) -> jax.Array:
        """bool [tq, tk]: which keys of kv tile `kv_tile` each query of `q_tile` sees, in
        dilation group `group` (traced int32 scalars; works inside Pallas kernels)."""
        rows, cols = math.prod(self.q_tile), math.prod(self.kv_tile)
        q_local = lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
        k_local = lax.broadcasted_iota(jnp.int32, (1, cols), 1)
        q_grid, kv_grid = self.tile_grid(self.q_tile), self.tile_grid(self.kv_tile)
        mask = None
        for a in range(self.rank):
            size = group_extent(self.spatial_shape[a], self.dilation[a],
                                _unravel(group, self.dilation, a))
            query = (_unravel(q_tile, q_grid, a) * self.q_tile[a]
                     + _unravel(q_local, self.q_tile, a))
            lo, hi = window(jnp.minimum(query, size - 1), size, self.kernel_size[a],
                            self.causal[a], jnp)
            key = _unravel(kv_tile, kv_grid, a) * self.kv_tile[a] + _unravel(k_local,
                                                                             self.kv_tile, a)
            inside = (lo <= key) & (key < hi)
            mask = inside if mask is None else mask & inside
        return mask

    # ---- tile lists ---------------------------------------------------------------------------

    @functools.cache  # noqa: B019 - plans are few, frozen and hashable
    def kv_lists(self) -> TileLists:
        """For each group and query tile, the kv tiles to visit."""
        return self._lists(transpose=False)

    @functools.cache  # noqa: B019 - plans are few, frozen and hashable
    def query_lists(self) -> TileLists:
        """For each group and kv tile, the query tiles that visit it."""
        return self._lists(transpose=True)

    def _lists(self, transpose: bool) -> TileLists:
        per_group = []
        for group in range(self.groups):
            intervals = []
            for a in range(self.rank):
                bounds = self._axis_intervals(a, _unravel(group, self.dilation, a))
                if transpose:
                    bounds = _transpose_intervals(*bounds, self.tile_grid(self.kv_tile)[a])
                intervals.append(bounds)
            per_group.append(_box_lists(intervals, self.tile_grid(
                self.q_tile if transpose else self.kv_tile)))
        width = max(tiles.shape[1] for tiles, _ in per_group)
        tiles = np.stack([np.pad(t, [(0, 0), (0, width - t.shape[1])], mode="edge")
                          for t, _ in per_group])
        return TileLists(tiles.astype(np.int32),
                         np.stack([c for _, c in per_group]).astype(np.int32))

    def _axis_intervals(self, axis: int, group: int):
        """Along one axis, per query tile: the kv tiles it meets, [lo, hi], and those whose
        every key all its queries see, [full_lo, full_hi] (inclusive; empty when lo > hi)."""
        size = group_extent(self.spatial_shape[axis], self.dilation[axis], group)
        q_tile, kv_tile = self.q_tile[axis], self.kv_tile[axis]
        first = np.arange(self.tile_grid(self.q_tile)[axis]) * q_tile
        first_lo, first_hi = window(np.minimum(first, size - 1), size,
                                    self.kernel_size[axis], self.causal[axis])
        last_lo, last_hi = window(np.minimum(first + q_tile - 1, size - 1), size,
                                  self.kernel_size[axis], self.causal[axis])
        # Window bounds grow with the query, so a tile's windows cover [first_lo, last_hi)
        # and all of them contain [last_lo, first_hi). All four bounds grow with the tile.
        return (first_lo // kv_tile, (last_hi - 1) // kv_tile,
                -(-last_lo // kv_tile), first_hi // kv_tile - 1)


def _unravel(index, shape: Shape, axis: int):
    """Coordinate `axis` of a row-major flat `index` into `shape`."""
    return (index // math.prod(shape[axis + 1:])) % shape[axis]


def _transpose_intervals(lo, hi, full_lo, full_hi, columns: int):
    """Per-row inclusive column intervals that grow with the row -> per column, the rows
    whose interval holds it (again intervals, as the bounds are monotone)."""
    column = np.arange(columns)
    return (np.searchsorted(hi, column, "left"), np.searchsorted(lo, column, "right") - 1,
            np.searchsorted(full_hi, column, "left"),
            np.searchsorted(full_lo, column, "right") - 1)


def _box_lists(intervals, column_grid: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Row-major flat lists from per-axis intervals: for each row multi-index, the column
    multi-indices inside its per-axis intervals (a box), fully visible ones (inside every
    axis' full interval) first. Cost O(rows x box size), never rows x columns.

    Returns (tiles int [R, S], counts int [R, 2]) as in `TileLists`.
    """
    index, relation = np.zeros((1, 1), np.int64), np.full((1, 1), 2, np.int8)
    for (lo, hi, full_lo, full_hi), columns in zip(intervals, column_grid, strict=True):
        width = max(int((hi - lo).max()) + 1, 1)
        axis_index = lo[:, None] + np.arange(width)[None, :]  # [rows_a, width_a]
        full = (full_lo[:, None] <= axis_index) & (axis_index <= full_hi[:, None])
        axis_relation = np.where(axis_index <= hi[:, None], np.where(full, 2, 1), 0)
        axis_index = np.clip(axis_index, 0, columns - 1)
        index = (index[:, None, :, None] * columns + axis_index[None, :, None, :]).reshape(
            index.shape[0] * len(lo), -1)
        relation = np.minimum(relation[:, None, :, None],
                              axis_relation[None, :, None, :]).reshape(index.shape)
    # Sort each row: full (2) first, then partial (1), then padding (0); stable by index.
    order = np.argsort(-relation, axis=1, kind="stable")
    relation = np.take_along_axis(relation, order, axis=1)
    index = np.take_along_axis(index, order, axis=1)
    counts = np.stack([(relation == 2).sum(1), (relation > 0).sum(1)], axis=1)
    last = np.take_along_axis(index, np.maximum(counts[:, 1:] - 1, 0), axis=1)
    return np.where(relation > 0, index, last), counts


# rank -> (query tile, kv tile) before clipping to the grid; 2-D and 3-D picked with the
# per-kernel tuning script that experiments/tune.py replaced, on an H200 at 256 x 256
# (k = 7, 13, 31) and 16 x 64 x 64 (k = 3, 7, 7) (tune_neighborhood_*.json in
# experiments/results/nvidia_h200/): 8 x 8 / 8 x 8
# is best at k = 31 and within 11% of the best at k = 7 (8 x 8 / 4 x 16). 1-D is untuned.
DEFAULT_TILES = {
    1: ((64,), (64,)),
    2: ((8, 8), (8, 8)),
    3: ((1, 4, 16), (1, 8, 8)),
}


@dataclasses.dataclass(frozen=True)
class Tiles:
    """The tiling part of a kernel config (the GPU and TPU `Config`s extend it)."""

    q_tile: tuple[int, ...]  # query tile, one size per axis
    kv_tile: tuple[int, ...]  # kv tile, one size per axis
    interpret: bool = False  # run in interpret mode (TPU: uninitialised memory NaN-poisoned)

    def __post_init__(self):
        for name in ("q_tile", "kv_tile"):
            tile = getattr(self, name)
            if isinstance(tile, int | str) or not all(isinstance(t, int) for t in tile):
                raise ValueError(f"{name} must be one int per spatial axis, e.g. (8, 8); "
                                 f"got {tile!r}")
            object.__setattr__(self, name, tuple(tile))  # lists become hashable tuples

    @classmethod
    def default(cls, spatial_shape: Shape, dilation: Shape, interpret: bool = False):
        """The config with `default_tiles` (and the class's other defaults)."""
        return cls(*default_tiles(spatial_shape, dilation), interpret=interpret)


def default_tiles(spatial_shape: Shape, dilation: Shape) -> tuple[Shape, Shape]:
    """(q_tile, kv_tile): `DEFAULT_TILES` clipped per axis to the smallest power of two that
    holds a dilation group."""
    slots = [-(-n // d) for n, d in zip(spatial_shape, dilation, strict=True)]
    default_q, default_kv = DEFAULT_TILES[len(spatial_shape)]
    clip = lambda tile: tuple(min(t, 1 << (m - 1).bit_length())  # noqa: E731
                              for t, m in zip(tile, slots, strict=True))
    return clip(default_q), clip(default_kv)


def make_plan(spatial_shape: Shape, kernel_size: Shape, dilation: Shape,
              causal: tuple[bool, ...], heads: int, kv_heads: int, head_dim: int,
              q_tile: Shape, kv_tile: Shape) -> Plan:
    """The plan of one call with the given tiles (`default_tiles` gives the defaults)."""
    return Plan(tuple(spatial_shape), tuple(kernel_size), tuple(dilation), tuple(causal),
                tuple(q_tile), tuple(kv_tile), heads, kv_heads, head_dim)

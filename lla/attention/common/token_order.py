"""Token orders: how a model feeds the tokens of a 1-, 2- or 3-D grid to an attention op.

Models hold tokens in raster (row-major) order over their grid. What an op needs is one of
its capabilities, `token_order` (`lla.attention.registry.Capabilities`); `for_op` turns
(op, grid) into a `TokenOrder`: the permutation to apply once at the input, its inverse to
apply once at the output, the grid coordinates of every fed token (for positional encodings
such as RoPE), and the spatial keyword arguments the op needs.

    order = token_order.for_op("llsa", (256, 256))   # Z-order: LLSA pools runs of tokens
    x = order.to_op(x)                               # [B, N, ...] raster -> op order
    positions = order.positions                      # [N, 2] (y, x) of each fed token
    out = op(q, k, v, **order.op_arguments(kwargs))  # adds spatial_shape for grid ops
    y = order.from_op(y)                             # op order -> raster

Orders by capability:
  "any"        the natural (raster) order; the op's result does not depend on it.
  "hierarchy"  Z-order (Morton order) on 2-D and 3-D grids, the natural order in 1-D.
               Hierarchical attention (LLSA) mean-pools runs of consecutive tokens, so the
               order decides which pixels pool together: in raster order a run of 16 tokens
               is a 1 x 16 strip, in Z-order a 4 x 4 patch, and every aligned 2^i x 2^i square
               (2^i cube for video) is one contiguous run of 4^i (8^i) tokens.
  "gilbert"    the generalized Hilbert ("Gilbert") curve on 2-D and 3-D grids (`gilbert_2d`,
               `gilbert_3d`), the natural order in 1-D. Block-sparse attention (ASA) cuts the
               tokens into blocks of consecutive tokens, so the order decides the shape of a
               block: along the curve each block is a compact, connected region for any grid
               size (e.g. 21 x 30 x 52 video latents, where Z-order's blocks straggle), and on a
               power-of-two square or cube each aligned 2^i square (cube) is one run, as in
               Z-order.
  "grid"       raster order, and `spatial_shape=grid` passed to the op.

Causal over the first axis (frames of a video: a token of frame t sees the tokens of frames
<= t), `frame_causal_arguments(op, grid)`: per-axis `causal=(True, False, ...)` for "grid" ops,
`causal=True, causal_block_size=prod(grid[1:])` for "any" ops with the `block_causal`
capability (in raster order each frame is one run of tokens); `frame_causal_ops(rank)` lists
the ops that can.

Permutations are host-side int32 numpy arrays, so they enter jitted code as constants.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lla.attention import registry


def zorder_2d(height: int, width: int) -> np.ndarray:
    """Raster -> Z-order permutation of a height x width grid.

    `tokens_z = tokens[:, perm]` reorders raster tokens (index y * width + x). Position s of
    Z-order holds the cell whose Morton code, bits interleaved with x least significant
    (s = Σ_b x_b·4^b + y_b·2·4^b), is the s-th smallest: each 2 x 2 quad is visited
    top-left, top-right, bottom-left, bottom-right. Other sizes keep the order of the
    enclosing power-of-two square and skip the cells outside the grid.

    Returns:
      perm: [height * width] int32, a permutation of range(height * width).
    """
    return _morton_permutation("zorder_2d", height=height, width=width)


def zorder_3d(frames: int, height: int, width: int) -> np.ndarray:
    """Raster -> Z-order permutation of a frames x height x width volume.

    As `zorder_2d` for raster index t * height * width + y * width + x, with bits
    interleaved x least significant, then y, then t (s = Σ_b x_b·8^b + y_b·2·8^b + t_b·4·8^b).

    Returns:
      perm: [frames * height * width] int32, a permutation of range(frames * height * width).
    """
    return _morton_permutation("zorder_3d", frames=frames, height=height, width=width)


def gilbert_2d(height: int, width: int) -> np.ndarray:
    """Raster -> generalized Hilbert ("Gilbert") permutation of a height x width grid.

    `tokens_g = tokens[:, perm]` reorders raster tokens (index y * width + x). The curve is
    `gilbert_3d`'s with a single frame: it starts at (0, 0), leaves along the longer side
    (x on ties) and ends at the far corner of that side. Each step goes to a cell sharing a
    side, except for exactly one diagonal step when the longer side is odd and the shorter
    even: a path through an even number of cells ends on the other checkerboard colour than
    it starts, and that far corner has the same one. On a 2^k x 2^k square it is the Hilbert
    curve: each aligned 2^i x 2^i square is one run of 4^i consecutive positions.

    Returns:
      perm: [height * width] int32, a permutation of range(height * width).
    """
    height, width = _checked_sizes("gilbert_2d", height=height, width=width)
    return _gilbert_permutation(1, height, width).copy()


def gilbert_3d(frames: int, height: int, width: int) -> np.ndarray:
    """Raster -> generalized Hilbert ("Gilbert") permutation of a frames x height x width
    volume.

    `tokens_g = tokens[:, perm]` reorders raster tokens (index t * height * width +
    y * width + x). The curve fills a box of any size: it starts at (0, 0, 0), leaves along
    the longest axis (ties: x, then y, then t) and ends at the far end of that axis. A box
    is cut across its long axes into 2, 3 or 5 sub-boxes (halves rounded to an even length
    where the axis is longer than 2), each traversed by the same curve, turned so that one
    sub-curve ends next to where the next begins. So a run of consecutive positions is a
    compact, connected region for any sizes. With even sizes each step goes to a cell
    sharing a face; odd sizes add some steps to a cell sharing only an edge (two coordinates
    change by one), never farther. On a 2^k cube it is a 3-D Hilbert curve: each aligned
    2^i cube is one run of 8^i consecutive positions.

    Returns:
      perm: [frames * height * width] int32, a permutation of range(frames * height * width).
    """
    sizes = _checked_sizes("gilbert_3d", frames=frames, height=height, width=width)
    return _gilbert_permutation(*sizes).copy()


def inverse(perm: np.ndarray) -> np.ndarray:
    """The inverse permutation: `x[..., perm][..., inverse(perm)] == x`.

    Args:
      perm: [n] integers, a permutation of range(n).

    Returns:
      [n] int32 with `inverse(perm)[perm] == range(n)`.
    """
    perm = np.asarray(perm)
    if perm.ndim != 1 or not np.issubdtype(perm.dtype, np.integer):
        raise ValueError(
            f"inverse needs a 1-D integer array, got shape {perm.shape} dtype {perm.dtype}"
        )
    if not np.array_equal(np.sort(perm), np.arange(perm.size)):
        raise ValueError(
            f"inverse needs a permutation of range({perm.size}) (each index exactly once), "
            f"got {perm}"
        )
    inv = np.empty(perm.size, np.int32)
    inv[perm] = np.arange(perm.size, dtype=np.int32)
    return inv


def permute_tokens(x: jax.Array | np.ndarray, perm: np.ndarray) -> jax.Array:
    """Reorder the token axis: `x[:, perm]`.

    Args:
      x: [batch, tokens, ...] jax or numpy array.
      perm: [tokens] int32, e.g. from `zorder_2d` or `inverse`.

    Returns:
      [batch, tokens, ...] jax array whose token i is x's token perm[i].
    """
    if x.ndim < 2 or np.ndim(perm) != 1 or x.shape[1] != len(perm):
        raise ValueError(
            f"permute_tokens needs x [batch, tokens, ...] and perm [tokens], "
            f"got x {tuple(x.shape)} and perm {np.shape(perm)}"
        )
    return jnp.take(x, perm, axis=1)


def _checked_sizes(caller: str, **sizes: int) -> tuple[int, ...]:
    """`sizes` (named axis lengths, slowest axis first) as ints; ValueError naming `caller`
    and the axis unless each is a positive int."""
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(
                f"{caller} needs {name} to be a positive int, got {size!r} ({type(size).__name__})"
            )
    return tuple(int(size) for size in sizes.values())


def _morton_permutation(caller: str, **sizes: int) -> np.ndarray:
    """Raster -> Morton permutation of a grid; `sizes` from slowest to fastest axis."""
    shape = _checked_sizes(caller, **sizes)
    coords = np.indices(shape).reshape(len(shape), -1)  # [axes, cells], raster order
    codes = np.zeros(coords.shape[1], np.int64)
    for bit in range((max(shape) - 1).bit_length()):
        # The fastest axis (x) takes the least significant bit of each group.
        for rank, axis_coords in enumerate(coords[::-1]):
            codes |= ((axis_coords >> bit) & 1) << (len(shape) * bit + rank)
    return np.argsort(codes).astype(np.int32)


@functools.lru_cache(maxsize=16)
def _gilbert_permutation(frames: int, height: int, width: int) -> np.ndarray:
    """The Gilbert permutation of a (checked) grid: [frames * height * width] int32,
    read-only, since it is cached and shared (the public functions copy it)."""
    shape = (frames, height, width)
    longest = max((2, 1, 0), key=lambda axis: shape[axis])  # axes t, y, x = 0, 1, 2
    others = [axis for axis in (2, 1, 0) if axis != longest]
    axes = [np.eye(3, dtype=np.int64)[axis] * shape[axis] for axis in (longest, *others)]
    strides = np.array([height * width, width, 1])
    perm = _box_curve(*axes, strides=strides, memo={}).astype(np.int32)
    perm.flags.writeable = False
    return perm


def _box_curve(a: np.ndarray, b: np.ndarray, c: np.ndarray, *, strides: np.ndarray,
               memo: dict) -> np.ndarray:
    """The curve through the box spanned by a, b, c from its corner cell, as raster offsets.

    Args:
      a, b, c: int64 [3] axis vectors (t, y, x) of the box, each along one grid axis; its
        length |a| (in cells) is the box's extent along it, its sign the direction of travel.
        The curve runs from the corner cell, first along a, to the cell a - sign(a).
      strides: int64 [3], the raster strides (height * width, width, 1).
      memo: curves already made, keyed by (a, b, c): boxes of the same vectors have the same
        curve up to a shift, and there are few distinct ones per level of cutting.

    Returns:
      int64 [|a| * |b| * |c|]: raster index of each cell of the box, in curve order, minus
      the raster index of the corner cell.
    """
    key = (tuple(a), tuple(b), tuple(c))
    if key not in memo:
        lengths = [int(abs(v.sum())) for v in (a, b, c)]
        if sum(n > 1 for n in lengths) <= 1:  # a row of cells (or one cell)
            row = (a, b, c)[int(np.argmax(lengths))]
            memo[key] = np.arange(max(lengths)) * int(np.sign(row) @ strides)
        else:
            memo[key] = np.concatenate([
                int(corner @ strides) + _box_curve(*axes, strides=strides, memo=memo)
                for corner, *axes in _sub_boxes(a, b, c)])
    return memo[key]


def _sub_boxes(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """How the box spanned by a, b, c (at least two axes longer than one cell) is cut, in
    curve order: (corner, a', b', c') of each sub-box, the corner relative to the box's.

    The cut follows the box's proportions: a box much longer along a than across is halved
    along a; else one that is flat along c (or b) is cut in three across a and b (a and c),
    a 2-D Hilbert step; else in five across all three axes, a 3-D Hilbert step. Each
    sub-curve starts next to the previous one's end, and the last one ends at a - sign(a).
    """
    w, h, d = (int(abs(v.sum())) for v in (a, b, c))
    da, db, dc = np.sign(a), np.sign(b), np.sign(c)
    a2, b2, c2 = da * _even_half(w), db * _even_half(h), dc * _even_half(d)
    origin, far = np.zeros(3, np.int64), a - da  # the start corner and the end cell
    if 2 * w > 3 * h and 2 * w > 3 * d:
        return [(origin, a2, b, c), (a2, a - a2, b, c)]
    if 3 * h > 4 * d:
        return [(origin, b2, c, a2), (b2, a, b - b2, c), (far + b2 - db, -b2, c, a2 - a)]
    if 3 * d > 4 * h:
        return [(origin, c2, a2, b), (c2, a, b, c - c2), (far + c2 - dc, -c2, a2 - a, b)]
    return [(origin, b2, c2, a2), (b2, c, a2, b - b2), (b2 - db + c - dc, a, -b2, c2 - c),
            (far + b2 + c - dc, -c, a2 - a, b - b2), (far + b2 - db, -b2, c2, a2 - a)]


def _even_half(length: int) -> int:
    """Where to cut an axis of `length` cells: about half, rounded up to even when the axis
    is longer than 2 (even sub-boxes join with face steps)."""
    half = length // 2
    return half + 1 if half % 2 and length > 2 else half


@dataclasses.dataclass(frozen=True, eq=False)
class TokenOrder:
    """How the tokens of one grid are fed to one op (see the module docstring).

    Attributes:
      grid: the token grid, 1 to 3 axes, slowest first; raster index r = Σ_a c_a·Π_{b>a} n_b.
      permutation: int32 [N]: the raster index of the token fed at each position, or None
        for the natural order (then `to_op` and `from_op` move nothing).
      op_kwargs: the spatial keyword arguments the op needs: {} or {"spatial_shape": grid}.
    """

    grid: tuple[int, ...]
    permutation: np.ndarray | None
    op_kwargs: Mapping[str, Any]

    @property
    def tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def inverse(self) -> np.ndarray | None:
        """int32 [N]: the op position of each raster token (None for the natural order)."""
        return None if self.permutation is None else inverse(self.permutation)

    @property
    def positions(self) -> np.ndarray:
        """int64 [N, rank]: grid coordinates (slowest axis first) of the token fed at each
        position."""
        order = np.arange(self.tokens) if self.permutation is None else self.permutation
        return np.stack(np.unravel_index(order, self.grid), axis=-1)

    def to_op(self, x: jax.Array) -> jax.Array:
        """[B, N, ...] in raster order -> the op's order."""
        return x if self.permutation is None else permute_tokens(x, self.permutation)

    def from_op(self, x: jax.Array) -> jax.Array:
        """[B, N, ...] in the op's order -> raster order."""
        return x if self.permutation is None else permute_tokens(x, self.inverse)

    def op_arguments(self, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        """`kwargs` plus `op_kwargs`; a spatial argument given in both must agree.

        Raises:
          ValueError: `kwargs` sets a spatial argument to another value than the grid's.
        """
        merged = dict(kwargs or {})
        for key, value in self.op_kwargs.items():
            if key in merged and tuple(np.ravel(merged[key]).tolist()) != tuple(value):
                raise ValueError(f"attention argument {key}={merged[key]!r} contradicts the "
                                 f"token grid {value}; leave it out (the model passes it)")
            merged[key] = value
        return merged


def for_op(op: str | registry.AttentionOp, grid: Sequence[int], *,
           natural_order: bool = False) -> TokenOrder:
    """The order in which a model feeds the tokens of `grid` to `op`.

    Args:
      op: a registered op or its name.
      grid: 1 to 3 positive axis lengths, slowest first, e.g. (height, width) or
        (frames, height, width); N = prod(grid).
      natural_order: feed "hierarchy" and "gilbert" ops the natural (raster) order anyway:
        an ablation (LLSA then pools 1 x B strips instead of patches, ASA's blocks are
        strips). "grid" ops keep their order.

    Raises:
      ValueError: a malformed grid, or a grid rank the op does not take (naming the ranks
        it does take).
    """
    op = registry.get(op)
    grid = _checked_grid(op, grid)
    capabilities = op.capabilities
    if capabilities.token_order == "grid":
        return TokenOrder(grid, None, {"spatial_shape": grid})
    curves = _CURVES.get(capabilities.token_order)
    if curves and len(grid) > 1 and not natural_order:
        return TokenOrder(grid, curves[len(grid)](*grid), {})
    return TokenOrder(grid, None, {})


# The space-filling curves of the token orders that reorder 2-D and 3-D grids, by grid rank.
_CURVES = {"hierarchy": {2: zorder_2d, 3: zorder_3d},
           "gilbert": {2: gilbert_2d, 3: gilbert_3d}}


def frame_causal_arguments(op: str | registry.AttentionOp, grid: Sequence[int]
                           ) -> dict[str, Any]:
    """The keyword arguments that make `op` causal over the first axis of `grid`.

    A token of slice t of the first axis (frame t of a video [T, H, W]) then sees the tokens
    of slices <= t (those inside its window, for windowed ops) and none of a later slice.
    Merge them with the spatial ones: `for_op(op, grid).op_arguments({**kwargs, **these})`.

    Args:
      op: a registered op or its name.
      grid: 1 to 3 positive axis lengths, the causal axis first, e.g. (frames, height, width).

    Returns:
      {"causal": (True, False, ...)} (one flag per axis) for token order "grid";
      {"causal": True, "causal_block_size": prod(grid[1:])} for token order "any" with the
      `block_causal` capability (raster order: each slice is one run of tokens).

    Raises:
      ValueError: a malformed grid, a rank the op does not take, or an op that cannot be
        causal over the first axis (not causal; a hierarchy or Gilbert order, whose runs mix
        slices; an "any" op without causal blocks), naming the ops that can
        (`frame_causal_ops`).
    """
    op = registry.get(op)
    grid = _checked_grid(op, grid)
    why_not = _why_not_frame_causal(op.capabilities)
    if why_not:
        raise ValueError(
            f"attention {op.name!r} cannot be causal over the first axis of the token grid "
            f"{grid}: {why_not}; ops that can: {', '.join(frame_causal_ops(len(grid))) or 'none'}")
    if op.capabilities.token_order == "grid":
        return {"causal": (True,) + (False,) * (len(grid) - 1)}
    return {"causal": True, "causal_block_size": math.prod(grid[1:])}


def frame_causal_ops(rank: int = 3) -> tuple[str, ...]:
    """Names of the registered ops that `frame_causal_arguments` can make causal over the
    first axis of a `rank`-axis grid (1 to 3), sorted."""
    return tuple(name for name in registry.names()
                 if rank in registry.get(name).capabilities.spatial_dims
                 and not _why_not_frame_causal(registry.get(name).capabilities))


def _why_not_frame_causal(capabilities: registry.Capabilities) -> str:
    """Why an op with these capabilities cannot be causal over a grid's first axis ("" if it
    can)."""
    if not capabilities.causal:
        return "it is not causal"
    if capabilities.token_order == "hierarchy":
        return "its tokens come in hierarchy (Z-) order, whose runs mix slices of the grid"
    if capabilities.token_order == "gilbert":
        return ("its tokens come in Gilbert-curve order, whose runs (its blocks) mix slices "
                "of the grid")
    if capabilities.token_order == "any" and not capabilities.block_causal:
        return "it is token causal only (no causal_block_size: capability block_causal)"
    return ""


def _checked_grid(op: registry.AttentionOp, grid: Sequence[int]) -> tuple[int, ...]:
    """`grid` as a tuple of 1 to 3 ints, of a rank `op` takes; ValueError otherwise."""
    grid = tuple(grid)
    if not 1 <= len(grid) <= 3 or not all(
            isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1
            for n in grid):
        raise ValueError(f"token grid {grid!r}: expected 1 to 3 positive ints")
    grid = tuple(int(n) for n in grid)
    spatial_dims = op.capabilities.spatial_dims
    if len(grid) not in spatial_dims:
        raise ValueError(
            f"attention {op.name!r} takes {'/'.join(map(str, spatial_dims))}-D "
            f"token grids, not the {len(grid)}-D grid {grid}")
    return grid

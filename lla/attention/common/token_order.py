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


def _morton_permutation(caller: str, **sizes: int) -> np.ndarray:
    """Raster -> Morton permutation of a grid; `sizes` from slowest to fastest axis."""
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(
                f"{caller} needs {name} to be a positive int, got {size!r} ({type(size).__name__})"
            )
    shape = tuple(int(size) for size in sizes.values())
    coords = np.indices(shape).reshape(len(shape), -1)  # [axes, cells], raster order
    codes = np.zeros(coords.shape[1], np.int64)
    for bit in range((max(shape) - 1).bit_length()):
        # The fastest axis (x) takes the least significant bit of each group.
        for rank, axis_coords in enumerate(coords[::-1]):
            codes |= ((axis_coords >> bit) & 1) << (len(shape) * bit + rank)
    return np.argsort(codes).astype(np.int32)


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
      natural_order: feed "hierarchy" ops the natural (raster) order anyway: an ablation
        (LLSA then pools 1 x B strips instead of patches). "grid" ops keep their order.

    Raises:
      ValueError: a malformed grid, or a grid rank the op does not take (naming the ranks
        it does take).
    """
    op = registry.get(op)
    grid = _checked_grid(op, grid)
    capabilities = op.capabilities
    if capabilities.token_order == "grid":
        return TokenOrder(grid, None, {"spatial_shape": grid})
    if capabilities.token_order == "hierarchy" and len(grid) > 1 and not natural_order:
        permutation = zorder_2d(*grid) if len(grid) == 2 else zorder_3d(*grid)
        return TokenOrder(grid, permutation, {})
    return TokenOrder(grid, None, {})


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
        causal over the first axis (not causal; a hierarchy order, whose runs mix slices; an
        "any" op without causal blocks), naming the ops that can (`frame_causal_ops`).
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

"""Token layouts: static permutations of the token axis, and their inverses.

Hierarchical attention (LLSA) mean-pools runs of consecutive tokens into coarser tokens, so
the token order decides which pixels pool together. In raster order a run of 16 tokens is a
1 x 16 strip; in Z-order (Morton order) it is a 4 x 4 patch, and every aligned 2^i x 2^i
square (2^i cube for video) is one contiguous run of 4^i (8^i) tokens.

A model permutes its tokens once at the input and applies `inverse` once at the output:

    perm = zorder_2d(height, width)                 # [height * width] int32
    tokens = permute_tokens(tokens, perm)           # [batch, tokens, ...], raster -> Z-order
    ...                                             # blocks; permute RoPE positions likewise
    tokens = permute_tokens(tokens, inverse(perm))  # Z-order -> raster

Permutations are host-side int32 numpy arrays, so they enter jitted code as constants.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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

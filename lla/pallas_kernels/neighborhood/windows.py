"""Neighbourhood windows along one axis (NATTEN semantics), shared by reference and kernels.

An axis of n tokens with dilation d splits into d groups, group r = {r, r + d, r + 2d, ...}
of `group_extent(n, d, r)` members; a query's window lives in its group. In group index
space (index i stands for token r + d·i) query i sees the half-open range `window(i, ...)`:
  non-causal: k keys starting at clip(i - k // 2, 0, n_r - k): the window shifts at the
              borders instead of shrinking;
  causal:     [max(i - k + 1, 0), i], only keys at or before the query.
The N-D neighbourhood is the product of the per-axis windows.

Functions take an array namespace `xp` (numpy for static tables, jax.numpy inside traced
code and kernels) and broadcast over array arguments.
"""

from __future__ import annotations

import numpy as np


def group_extent(extent, dilation: int, group):
    """Members of dilation group `group` on an axis of `extent` tokens."""
    return (extent - group + dilation - 1) // dilation


def window(index, group_size, kernel: int, causal: bool, xp=np):
    """(lo, hi): the half-open window of group index `index` in a group of `group_size`."""
    if causal:
        return xp.maximum(index - kernel + 1, 0), index + 1
    lo = xp.minimum(xp.maximum(index - kernel // 2, 0), group_size - kernel)
    return lo, lo + kernel

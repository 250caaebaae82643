"""A brute-force oracle for neighborhood attention (NATTEN semantics), written from the spec.

Per axis of length n, kernel k, dilation d, causal c: a query at coordinate j lies in group
r = j mod d (members r, r+d, ... < n, n_r of them) at group index j' = j // d. Non-causal, it
sees group indices [s, s + k) with s = clip(j' - k // 2, 0, n_r - k); causal, it sees
[max(j' - k + 1, 0), j']. Group index i is coordinate r + d * i. The N-D neighbourhood is the
Cartesian product of the per-axis sets over row-major tokens. Attention is a softmax with scale
1/sqrt(D) over the neighbourhood only.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np


def per_axis(value, rank: int, name: str) -> tuple:
    """`value` (a scalar or one value per axis) as a tuple of `rank` values."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank
    if len(values) != rank:
        raise ValueError(f"{name} needs 1 or {rank} values, got {len(values)}")
    return values


def axis_neighbours(j: int, n: int, k: int, d: int, causal: bool) -> list[int]:
    """Key coordinates seen by a query at coordinate `j` of one axis."""
    if k < 1 or d < 1 or k * d > n:
        raise ValueError(f"need kernel_size {k} >= 1, dilation {d} >= 1, k * d <= axis length {n}")
    r, index = j % d, j // d
    group_size = len(range(r, n, d))
    if causal:
        indices = range(max(index - k + 1, 0), index + 1)
    else:
        start = min(max(index - k // 2, 0), group_size - k)
        indices = range(start, start + k)
    return [r + d * i for i in indices]


def neighborhood_mask(spatial_shape, kernel_size, dilation=1, causal=False) -> np.ndarray:
    """Bool [N, N]: mask[query, key] is True where the query attends to the key."""
    shape = tuple(spatial_shape)
    rank = len(shape)
    kernels = per_axis(kernel_size, rank, "kernel_size")
    dilations = per_axis(dilation, rank, "dilation")
    causals = per_axis(causal, rank, "causal")
    tokens = math.prod(shape)
    mask = np.zeros((tokens, tokens), bool)
    for query in itertools.product(*(range(n) for n in shape)):
        sets = [axis_neighbours(j, n, k, d, c)
                for j, n, k, d, c in zip(query, shape, kernels, dilations, causals, strict=True)]
        row = np.ravel_multi_index(query, shape)
        for key in itertools.product(*sets):
            mask[row, np.ravel_multi_index(key, shape)] = True
    return mask


def neighborhood_oracle(q, k, v, mask) -> jax.Array:
    """Dense float32 attention at HIGHEST precision, logits outside `mask` [N, N] at -inf."""
    heads, kv_heads = q.shape[2], k.shape[2]
    k = jnp.repeat(k.astype(jnp.float32), heads // kv_heads, axis=2)
    v = jnp.repeat(v.astype(jnp.float32), heads // kv_heads, axis=2)
    precision = jax.lax.Precision.HIGHEST
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k, precision=precision)
    logits = jnp.where(jnp.asarray(mask), logits / math.sqrt(q.shape[-1]), -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=precision)
    return out.astype(q.dtype)

"""Validation of neighbourhood-attention arguments: per-axis values, geometry, errors that
say what would work."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def per_axis(name: str, value, rank: int, kind) -> tuple:
    """`value` (one per axis, or one for all) as a tuple of `rank` ints or (kind bool) bools."""
    values = (tuple(np.ravel(value).tolist()) if isinstance(value, Sequence | np.ndarray)
              and not isinstance(value, str | bytes) else (value,) * rank)
    if len(values) != rank:
        raise ValueError(f"neighborhood: {name} has {len(values)} values {values} for a "
                         f"{rank}-D spatial_shape; give one per axis or a single value")
    accepted = (bool, np.bool_) if kind is bool else (int, np.integer)
    if not all(isinstance(x, accepted) and (kind is bool or not isinstance(x, bool))
               for x in values):
        raise ValueError(f"neighborhood: {name} must be {'bools' if kind is bool else 'ints'}"
                         f" (one per axis or a single value); got {value!r}")
    return tuple(kind(x) for x in values)


def validate(q, k, spatial_shape, kernel_size, dilation, causal) -> dict:
    """Validated per-axis tuples: spatial_shape, kernel_size, dilation, causal."""
    tokens = q.shape[1]
    if k.shape[1] != tokens:
        raise ValueError(f"neighborhood: self-attention needs q and k with the same number "
                         f"of tokens; got q {tuple(q.shape)} and k {tuple(k.shape)}")
    shape = per_axis("spatial_shape", spatial_shape, np.size(spatial_shape), int)
    if not 1 <= len(shape) <= 3 or min(shape) < 1 or math.prod(shape) != tokens:
        raise ValueError(f"neighborhood: spatial_shape {shape} must have 1 to 3 positive "
                         f"axes whose product is the number of tokens {tokens}")
    rank = len(shape)
    kernel = per_axis("kernel_size", kernel_size, rank, int)
    dilation = per_axis("dilation", dilation, rank, int)
    causal = per_axis("causal", causal, rank, bool)
    for axis, (n, kk, d) in enumerate(zip(shape, kernel, dilation, strict=True)):
        if kk < 1 or d < 1:
            raise ValueError(f"neighborhood: kernel_size {kernel} and dilation {dilation} "
                             f"must be >= 1 on every axis")
        if kk * d > n:
            fixes = [f"kernel_size <= {n // d}"] + (
                [f"dilation <= {n // kk}"] if d > 1 and n // kk >= 1 else [])
            raise ValueError(
                f"neighborhood: kernel_size {kk} x dilation {d} = {kk * d} exceeds axis "
                f"{axis} of spatial_shape {shape}, of length {n}; use {' or '.join(fixes)}")
    return dict(spatial_shape=shape, kernel_size=kernel, dilation=dilation, causal=causal)

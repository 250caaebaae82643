"""`sequence_parallel`: a per-device sequence-parallel attention as a function of global
arrays, through `jax.shard_map`."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jax.sharding import Mesh, PartitionSpec


def sequence_parallel(fn: Callable, mesh: Mesh, *, axis_name: str = "sequence",
                      batch_axis: str | tuple[str, ...] | None = None,
                      **kwargs) -> Callable:
    """Wraps a per-device attention (`ring_attention`, `sequence_parallel_llsa`) for global
    arrays.

    Args:
      fn: fn(q, k, v, *, axis_name, **kwargs) on one device's tokens.
      mesh: a mesh (or the abstract mesh in context) with axis `axis_name` (P devices) and
        `batch_axis` if given.
      axis_name: the mesh axis the tokens are sharded over.
      batch_axis: a mesh axis (or a tuple of them, split jointly) the batch is sharded over
        (data parallelism), or None (replicated).
      **kwargs: fn's static options (causal, block_size, ...); with
        `return_residuals=True` fn returns (out, lse).

    Returns:
      attend(q [B, N, H, D], k, v [B, N, Hkv, D]) -> [B, N, H, D] (with `return_residuals`,
      also lse [B, H, N]), tokens sharded over `axis_name` (N divisible by P; device d
      holds tokens d·N/P .. (d+1)·N/P - 1).
    """
    spec = PartitionSpec(batch_axis, axis_name)
    out_specs = spec
    if kwargs.get("return_residuals"):
        out_specs = (spec, PartitionSpec(batch_axis, None, axis_name))
    return jax.shard_map(functools.partial(fn, axis_name=axis_name, **kwargs), mesh=mesh,
                         in_specs=(spec, spec, spec), out_specs=out_specs)

"""Multi-head self-attention layer over any registered attention op."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

import lla.attention as attention
from lla.attention import parallel, token_order
from lla.layers.rope import apply_rope
from lla.layers.sparse_linear import SparseLinearAttention

# Ops with parameters of their own (DESIGN §2): the linen module that owns them and calls the
# op, `module(name=op)(q, k, v, **op_kwargs)`.
OP_MODULES: Mapping[str, type[nn.Module]] = {"sla": SparseLinearAttention}

# The collection `align_with_dense` sows into: `model.apply(..., mutable=[ALIGNMENT])`.
ALIGNMENT = "alignment"
# Masking arguments an op and dense attention share; the dense branch of the alignment gets them.
DENSE_MASKING = ("causal", "causal_block_size", "segment_ids")


class AlignedOutputs(NamedTuple):
    """One attention layer's outputs on the same q, k, v, as `align_with_dense` sows them:
    `full` from dense attention (O_f), `sparse` from the layer's op (O_s), each
    [B, N, H, D] in the op's token order."""

    full: jax.Array
    sparse: jax.Array


def align_with_dense(module: nn.Module, q: jax.Array, k: jax.Array, v: jax.Array,
                     sparse: jax.Array, full_mode: jax.Array | bool, *,
                     dense: Callable[..., jax.Array] = attention.dot_product_attention,
                     **masking) -> jax.Array:
    """SSA's two forward modes (`lla.objectives.alignment`): dense attention on the same q, k, v
    as the sparse op, both outputs sown, one passed on.

    q [B, N, H, D], k, v [B, N, Hkv, D]; sparse [B, N, H, D] is the op's output on them.
    Computes full = `dense(q, k, v, **masking)` (masking: the op's causal, causal_block_size,
    segment_ids; `dense` is `dot_product_attention`, or its sequence-parallel form when the
    tokens are sharded), sows `AlignedOutputs(full, sparse)` into the collection
    `ALIGNMENT` of `module` (name "outputs", one entry per call) and returns full where
    `full_mode` (a bool scalar, the step's mode) is true, else sparse: the task gradient then
    flows through the passed-on branch only.
    """
    full = dense(q, k, v, **masking)
    module.sow(ALIGNMENT, "outputs", AlignedOutputs(full, sparse))
    return jnp.where(full_mode, full, sparse)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis with a learnable scale (eps 1e-5)."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        wide = x.astype(jnp.float32)
        normed = wide * jax.lax.rsqrt(jnp.square(wide).mean(-1, keepdims=True) + self.epsilon)
        return (normed * scale).astype(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention over any registered op.

    x [B, N, C] (tokens, already in the order the op wants) or [B, *grid, C] (a 1-3-D grid,
    e.g. [B, H, W, C] or [B, T, H, W, C]: the layer feeds the tokens in the op's order and
    passes its spatial arguments, `lla.attention.token_order`) -> the same shape. Steps:
    q, k, v projections (with bias), per-head RMS qk-norm, optional RoPE, the op called with
    `op_kwargs` (through its module in `OP_MODULES` when the op has parameters of its own,
    e.g. SLA's linear-branch projection), the output projection.

    `full_mode` None (the default) runs the op alone. A bool scalar switches on SSA
    alignment training (`align_with_dense`): dense attention runs on the same q, k, v too
    (with the op's causal masking, if any), both outputs are sown into the collection
    `ALIGNMENT`, and the layer passes on the dense output where `full_mode` is true (full
    mode), the op's where it is false (sparse mode).

    Attributes:
      num_heads: H; C must be divisible by it (head_dim = C / H).
      op: name in `lla.attention.names()`, e.g. "dense" or "llsa".
      op_kwargs: static keyword arguments for the op (block_size, topk, implementation...),
        over the op's `default_kwargs`. Ops on grids need `spatial_shape` here when x is
        [B, N, C]; with grid-shaped x it comes from the grid.
      qk_norm: RMS-normalise q and k per head before RoPE.
      sequence_axis: a mesh axis name, or None. When the mesh in context (`jax.set_mesh`)
        has this axis with P > 1 devices, the tokens of x [B, N, C] are taken as sharded
        over it (consecutive N / P per device, in the order given) and the op runs its
        sequence-parallel form (`lla.attention.parallel.sharded_attention`: "dense" as a
        ring, "llsa"; other ops raise ValueError), as does the dense branch of the
        alignment. Otherwise (no mesh, no such axis, P = 1) the op runs as usual.
      dtype: computation dtype (parameters stay float32).

    `rope` is (cos, sin), each [N, D / 2] (`lla.layers.rope.rope_2d`), one row per token of x
    in its own order (raster order for grid-shaped x).
    """

    num_heads: int
    op: str = "dense"
    op_kwargs: Mapping[str, Any] | None = None
    qk_norm: bool = True
    sequence_axis: str | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None = None,
                 full_mode: jax.Array | bool | None = None):
        op = attention.get(self.op)
        kwargs = {**op.default_kwargs, **(self.op_kwargs or {})}
        if x.ndim == 3:
            order = None
            if op.capabilities.token_order == "grid" and "spatial_shape" not in kwargs:
                raise ValueError(
                    f"Attention: {self.op!r} attends over a token grid and needs "
                    f"spatial_shape=(H, W) (or (T, H, W)); got tokens [B, N, C] = "
                    f"{tuple(x.shape)} with N={x.shape[1]} and no spatial_shape. Pass x as "
                    f"[B, H, W, C], or op_kwargs={{'spatial_shape': ...}}")
        elif 4 <= x.ndim <= 5:
            order = token_order.for_op(op, x.shape[1:-1])
            kwargs = order.op_arguments(kwargs)
        else:
            raise ValueError(f"Attention: x must be tokens [B, N, C] or a grid [B, H, W, C] / "
                             f"[B, T, H, W, C]; got shape {tuple(x.shape)}")
        grid_shape = x.shape
        batch, width = x.shape[0], x.shape[-1]
        x = x.reshape(batch, -1, width)
        tokens = x.shape[1]
        if width % self.num_heads:
            raise ValueError(f"Attention: width {width} is not divisible by num_heads "
                             f"{self.num_heads}")
        if order is not None:
            x = order.to_op(x)
            if rope is not None and order.permutation is not None:
                rope = tuple(jnp.take(r, order.permutation, axis=0) for r in rope)
        head_dim = width // self.num_heads
        shape = (batch, tokens, self.num_heads, head_dim)
        q, k, v = (nn.Dense(width, dtype=self.dtype, name=name)(x).reshape(shape)
                   for name in ("query", "key", "value"))
        if self.qk_norm:
            q, k = RMSNorm(name="query_norm")(q), RMSNorm(name="key_norm")(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dense = attention.dot_product_attention
        if parallel.axis_size(self.sequence_axis) > 1:
            out = parallel.sharded_attention(self.op, q, k, v, axis_name=self.sequence_axis,
                                             **kwargs)
            dense = functools.partial(parallel.sharded_attention, "dense",
                                      axis_name=self.sequence_axis)
        elif self.op in OP_MODULES:
            out = OP_MODULES[self.op](name=self.op)(q, k, v, **kwargs)
        else:
            out = op(q, k, v, **kwargs)
        if full_mode is not None:
            out = align_with_dense(self, q, k, v, out, full_mode, dense=dense,
                                   **self._dense_masking(kwargs))
        out = nn.Dense(width, dtype=self.dtype, name="out")(out.reshape(batch, tokens, width))
        if order is not None:
            out = order.from_op(out)
        return out.reshape(grid_shape)

    def _dense_masking(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The op's masking arguments, for the dense branch of the alignment."""
        masking = {name: kwargs[name] for name in DENSE_MASKING if name in kwargs}
        if not isinstance(masking.get("causal", False), bool):
            raise ValueError(f"Attention: alignment with dense attention takes causal=True or "
                             f"False; {self.op!r} has causal={masking['causal']!r} (per grid "
                             f"axis), which dense attention cannot express")
        return masking

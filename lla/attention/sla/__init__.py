"""Sparse-linear attention (SLA, thu-ml/SLA), registered as "sla": exact attention over each
query block's critical key blocks plus linear attention over its marginal ones, the
negligible ones skipped.

Tokens come in blocks of B consecutive tokens (the last one partial), so the op's
`token_order` is "hierarchy": models feed 2-D and 3-D grids in Z-order and a block is a
compact patch or cube. `selection.py` classifies the key blocks of every query block by the
pooled scores q̄·k̄ (no gradient): the top `critical` fraction, the bottom `negligible`
fraction, the rest marginal. The output of query
i in block b is

    o(i) = o_s(i) + o_l(i) W + c

  o_s  softmax attention (scale 1/sqrt(D)) over the tokens of b's critical blocks, on the
       sparse-flash kernels (`lla.pallas_kernels.sparse_flash`) or in plain JAX;
  o_l  linear attention with feature map φ over the tokens of b's marginal blocks
       (`linear.py`: φ(q)·Σ φ(k)vᵀ / φ(q)·Σ φ(k), 0 when there are none);
  W, c SLA's learnable projection of the linear branch ([D, D] and [D], shared by the
       heads). Its linen form `lla.layers.SparseLinearAttention` (what
       `lla.layers.Attention(op="sla")` uses) learns them from zero, as SLA fine-tunes; the
       plain function uses W = I, c = 0 unless given them.

All of o is differentiable in q, k, v, W and c. Every block critical is dense attention.
Released SLA uses B = 64, 20 % critical, none negligible (its kernel puts every non-critical
block in the linear branch) and the softmax feature map: the defaults here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lla.attention import registry
from lla.attention.common.block_sparse import num_blocks
from lla.attention.common.validation import check_flag, check_int, check_qkv
from lla.attention.sla import pallas_gpu, pallas_tpu, reference, selection
from lla.attention.sla.linear import FEATURE_MAPS


def sla(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    block_size: int = 64,
    critical: float = 0.2,
    negligible: float = 0.0,
    feature_map: str = "softmax",
    linear_kernel: jax.Array | None = None,
    linear_bias: jax.Array | None = None,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Sparse-linear attention (see the module docstring).

    Args:
      q: [B, Nq, H, D] float32, bfloat16 or float16.
      k, v: [B, Nk, Hkv, D], Hkv dividing H.
      block_size: tokens per query and key block (SLA: 64).
      critical: fraction of the nK = ceil(Nk / B) key blocks computed exactly per query
        block, in (0, 1]: floor(critical·nK) blocks, at least 1. 1.0 is dense attention.
      negligible: fraction skipped, in [0, 1): floor(negligible·nK) blocks; the critical and
        negligible blocks together may not exceed nK.
      feature_map: φ of the linear branch: "softmax" (over D), "elu" (elu + 1) or "relu".
      linear_kernel, linear_bias: the projection W [D, D] and c [D] of the linear branch
        (float32, learned by `lla.layers.SparseLinearAttention`); None: W = I, c = 0.
      implementation: None (best available), "pallas_gpu", "pallas_tpu", "xla", or a
        sequence of names.
      interpret: run the Pallas kernels in interpret mode (any platform, for tests).

    Returns:
      [B, Nq, H, D] in q's dtype.
    """
    check_qkv("sla", q, k, v)
    block_size = check_int("sla", "block_size", block_size, 1)
    key_blocks = num_blocks(k.shape[1], block_size)
    critical_blocks = max(1, _block_count("critical", critical, key_blocks, closed=True))
    negligible_blocks = _block_count("negligible", negligible, key_blocks, closed=False)
    if critical_blocks + negligible_blocks > key_blocks:
        raise ValueError(
            f"sla: critical={critical} and negligible={negligible} take {critical_blocks} + "
            f"{negligible_blocks} of the {key_blocks} key blocks; their sum may be at most "
            f"1 (lower one of them)")
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"sla: feature_map must be one of {FEATURE_MAPS}; got {feature_map!r}")
    interpret = check_flag("sla", "interpret", interpret)
    dim = q.shape[-1]
    kernel = _projection("linear_kernel", linear_kernel, (dim, dim), jnp.eye(dim))
    bias = _projection("linear_bias", linear_bias, (dim,), jnp.zeros(dim))
    return registry.call(SLA, implementation, q, k, v, kernel, bias, block_size=block_size,
                         critical_blocks=critical_blocks, negligible_blocks=negligible_blocks,
                         feature_map=feature_map, interpret=interpret)


def _block_count(name: str, fraction, key_blocks: int, *, closed: bool) -> int:
    """floor(fraction · key_blocks) for a fraction in (0, 1] (`closed`) or [0, 1)."""
    upper = "1]" if closed else "1)"
    valid = (isinstance(fraction, numbers.Real) and not isinstance(fraction, bool | np.bool_)
             and math.isfinite(fraction)
             and (0 < fraction <= 1 if closed else 0 <= fraction < 1))
    if not valid:
        raise ValueError(f"sla: {name} must be a fraction of the key blocks in "
                         f"{'(0' if closed else '[0'}, {upper}; got {fraction!r}")
    return math.floor(fraction * key_blocks + 1e-6)


def _projection(name: str, value, shape: tuple[int, ...], default: jax.Array) -> jax.Array:
    """The projection argument `name` as float32 of `shape` (`default` when None)."""
    if value is None:
        return default.astype(jnp.float32)
    if tuple(np.shape(value)) != shape:
        raise ValueError(f"sla: {name} must have shape {shape} (head_dim {shape[0]}); got "
                         f"{tuple(np.shape(value))}")
    return jnp.asarray(value, jnp.float32)


SLA = registry.register(registry.AttentionOp(
    name="sla",
    fn=sla,
    capabilities=registry.Capabilities(token_order="hierarchy", gqa=True),
    implementations=(pallas_gpu.IMPLEMENTATION, pallas_tpu.IMPLEMENTATION,
                     registry.Implementation("xla", reference.sla_xla)),
    summary="sparse-linear attention: exact critical blocks + linear attention over the "
            "marginal ones (SLA)",
    default_kwargs={"block_size": 64, "critical": 0.2},
    example_kwargs={"block_size": 4, "critical": 0.2, "negligible": 0.2},
    keys_per_query=selection.keys_per_query,
))

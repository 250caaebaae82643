"""Flash-style online softmax in the log2 domain, shared by the kernel families.

Kernels keep, per query row, the running max `m`, the running sum `l` of exp2(logit - m) and
the unnormalised output `acc`; logits are in log2 units (natural logits times LOG2E) so the
kernels use exp2. The saved log-sum-exp is natural: lse = (m + log2 l) / LOG2E.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOG2E = math.log2(math.e)


def init(rows: int, head_dim: int):
    """The empty carry (m [rows] = -inf, l [rows] = 0, acc [rows, head_dim] = 0), f32."""
    return (jnp.full((rows,), -jnp.inf, jnp.float32), jnp.zeros((rows,), jnp.float32),
            jnp.zeros((rows, head_dim), jnp.float32))


def update(carry, log2_logits: jax.Array, values: jax.Array, dot):
    """Folds one key tile into the carry.

    Args:
      carry: (m, l, acc) as from `init`; m and l may also be [rows, 1] columns (Mosaic TPU
        keeps row reductions as columns).
      log2_logits: f32 [rows, M], -inf where masked; a row may be fully masked in this tile.
      values: [M, D].
      dot: the backend's matmul, dot(a [rows, M], b [M, D]) -> f32 [rows, D].
    """
    row_max, row_sum, acc = carry
    columns = row_max.ndim == 2
    new_max = jnp.maximum(row_max, log2_logits.max(axis=1, keepdims=columns))
    # A row with no key so far keeps m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
    shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
    correction = jnp.exp2(row_max - shift)
    probs = jnp.exp2(log2_logits - _column(shift))
    row_sum = row_sum * correction + probs.sum(axis=1, keepdims=columns)
    acc = acc * _column(correction) + dot(probs.astype(values.dtype), values)
    return new_max, row_sum, acc


def finish(carry):
    """(output f32 [rows, D], natural lse f32 shaped like m) from a carry; every row must
    have seen at least one key (a row masked in every tile would give 0 / 0)."""
    row_max, row_sum, acc = carry
    return acc / _column(row_sum), (row_max + jnp.log2(row_sum)) / LOG2E


def _column(x: jax.Array) -> jax.Array:
    """[rows] or [rows, 1] -> [rows, 1]."""
    return x if x.ndim == 2 else x[:, None]

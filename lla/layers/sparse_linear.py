"""The linen form of "sla" (SLA's sparse-linear attention): the op plus the learnable
projection of its linear branch.

SLA (thu-ml/SLA) fine-tunes a model from full attention: the projection starts at zero, so a
fresh layer computes the sparse branch alone, and training learns how much of the linear
branch over the marginal blocks to add back. `lla.layers.Attention(op="sla")` uses this
module; called by hand it is `SparseLinearAttention()(q, k, v, **op_kwargs)`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import lla.attention as attention


class SparseLinearAttention(nn.Module):
    """`lla.attention.sla` with its projection as parameters.

    q [B, N, H, D], k/v [B, N, Hkv, D] -> [B, N, H, D]. Parameters (float32, zero at init,
    shared by all heads as in SLA): `linear_kernel` [D, D] and `linear_bias` [D], the
    projection of the linear branch. Keyword arguments go to the op (block_size, critical,
    negligible, feature_map, implementation, ...).
    """

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, **op_kwargs) -> jax.Array:
        head_dim = q.shape[-1]
        kernel = self.param("linear_kernel", nn.initializers.zeros, (head_dim, head_dim),
                            jnp.float32)
        bias = self.param("linear_bias", nn.initializers.zeros, (head_dim,), jnp.float32)
        return attention.sla(q, k, v, linear_kernel=kernel, linear_bias=bias, **op_kwargs)

"""SLA's linear branch: linear attention of each query over the tokens of its block's
marginal key blocks, and the output that adds it to the sparse branch.

With a feature map φ (softmax over the head dimension, elu + 1, or relu; applied to queries
and keys alike), the linear output of query i in block b is

    o_l(i) = φ(q_i) · Σ_{j marginal for b} Σ_{t in j} φ(k_t) v_tᵀ
             / φ(q_i) · Σ_{j marginal for b} Σ_{t in j} φ(k_t)

(0 when b has no marginal block, or the denominator is 0). The sums are block states: per
key block a [D, D] matrix and a [D] vector, summed over the marginal set of each query
block by one product with the [nQ, nK] marginal mask, so the work is nQ·nK·D² + N·D² per head
and nothing N x N exists. Then `combine` forms SLA's output o_s + o_l W + b.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lla.attention.common.block_sparse import pad_tokens

FEATURE_MAPS = ("softmax", "elu", "relu")


def feature_map(x: jax.Array, name: str) -> jax.Array:
    """φ(x) in float32, over the last axis."""
    x = x.astype(jnp.float32)
    if name == "softmax":
        return jax.nn.softmax(x, axis=-1)
    if name == "elu":
        return jax.nn.elu(x) + 1.0
    return jax.nn.relu(x)


def linear_branch(q: jax.Array, k: jax.Array, v: jax.Array, marginal: jax.Array, *,
                  block_size: int, feature: str) -> jax.Array:
    """q [Bt, Nq, H, D], k, v [Bt, Nk, Hkv, D], marginal float32 [Bt, H, nQ, nK] ->
    float32 [Bt, Nq, H, D], differentiable in q, k and v."""
    batch, q_tokens, heads, dim = q.shape
    group = heads // k.shape[2]
    size = block_size
    # Padding tokens are appended after the feature map, so their keys contribute nothing.
    key_features = pad_tokens(feature_map(k, feature), size)
    values = pad_tokens(v.astype(jnp.float32), size)
    key_features = key_features.reshape(batch, -1, size, *key_features.shape[2:])
    values = values.reshape(batch, -1, size, *values.shape[2:])
    states = jnp.einsum("bktgd,bktge->bkgde", key_features, values)  # [Bt, nK, Hkv, D, D]
    norms = key_features.sum(2)  # [Bt, nK, Hkv, D]
    # Query head h = g·group + r reads kv head g: no per-query-head copy of the states.
    marginal = marginal.reshape(batch, -1, group, *marginal.shape[2:])
    summed_states = jnp.einsum("bgrqk,bkgde->bqgrde", marginal, states).reshape(
        batch, -1, heads, dim, dim)
    summed_norms = jnp.einsum("bgrqk,bkgd->bqgrd", marginal, norms).reshape(
        batch, -1, heads, dim)
    query_features = pad_tokens(feature_map(q, feature), size)
    query_features = query_features.reshape(batch, -1, size, heads, dim)
    numerator = jnp.einsum("bqthd,bqhde->bqthe", query_features, summed_states)
    denominator = jnp.einsum("bqthd,bqhd->bqth", query_features, summed_norms)[..., None]
    positive = denominator > 0
    out = jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)
    return out.reshape(batch, -1, heads, dim)[:, :q_tokens]


def combine(sparse: jax.Array, linear: jax.Array, kernel: jax.Array, bias: jax.Array,
            dtype) -> jax.Array:
    """SLA's output o_s + o_l W + b: sparse and linear [Bt, N, H, D], kernel [D, D] and bias
    [D] (float32, shared by the heads) -> [Bt, N, H, D] in `dtype`."""
    projected = jnp.einsum("bnhd,de->bnhe", linear, kernel.astype(jnp.float32)) + bias
    return (sparse.astype(jnp.float32) + projected).astype(dtype)
